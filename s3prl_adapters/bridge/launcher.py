"""`run_downstream.py`: S3PRL's own launcher (same flags, same `main`) with this package plugged in.

Before S3PRL parses anything it: installs the compat workarounds, registers the adapter upstreams
in `s3prl.hub`, swaps in the adapter runner hook, fills in `--device` and a shipped `-c` config,
and checks `-u`/`-d`/`-k` so that mistakes end in one line instead of a traceback."""

import argparse
import difflib
import os
import sys
from pathlib import Path
from typing import List, Optional

from s3prl_adapters.errors import UserError

from s3prl_adapters.bridge.config_guard import available_tasks
from s3prl_adapters.paths import CONFIG_ROOT


def shipped_config(task: str) -> Optional[Path]:
    path = Path(CONFIG_ROOT) / task / "config.yaml"
    return path if path.is_file() else None


def _peek(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(add_help=False)
    for flags in (("-u", "--upstream"), ("-k", "--upstream_ckpt"), ("-d", "--downstream"), ("-c", "--config"),
                  ("-e", "--past_exp"), ("-m", "--mode"), ("-p", "--expdir"), ("-n", "--expname")):
        parser.add_argument(*flags)
    parser.add_argument("-a", "--auto_resume", action="store_true")
    return parser.parse_known_args(argv)[0]


def _replace_value(argv: List[str], flags, value: str) -> List[str]:
    out = list(argv)
    for i, a in enumerate(out):
        if a in flags and i + 1 < len(out):
            out[i + 1] = value
        for f in flags:
            if a.startswith(f + "="):
                out[i] = f"{f}={value}"
    return out


def _check_backbone_file(upstream: Optional[str], ckpt: Optional[str], what: str) -> None:
    """S3PRL's WavLM `eval()`s a string of the checkpoint's cfg; refuse anything but a literal before it
    loads (adapter upstreams check again when they load; stock `wavlm_local` loads `-k` itself)."""
    if upstream and upstream.startswith("wavlm") and ckpt and os.path.isfile(os.path.expanduser(ckpt)):
        from s3prl_adapters.method.backbone import check_wavlm_checkpoint_file

        check_wavlm_checkpoint_file(os.path.expanduser(ckpt), what)


def _resumed_checkpoint(args) -> Optional[str]:
    """The checkpoint S3PRL will adopt Args and Config from: `-e FILE`, the newest states-*.ckpt of
    `-e DIR`, or of the experiment folder when `-a` finds one there (S3PRL's own rules)."""
    import glob

    folder = None
    if args.past_exp:
        if os.path.isfile(args.past_exp):
            return args.past_exp
        folder = args.past_exp if os.path.isdir(args.past_exp) else None
    elif args.auto_resume:
        folder = args.expdir or (f"result/downstream/{args.expname}" if args.expname else None)
    states = glob.glob(os.path.join(folder, "states-*.ckpt")) if folder and os.path.isdir(folder) else []
    if not states:
        return None
    return sorted(states, key=lambda p: int(p.split("-")[-1].split(".")[0]))[-1]


def _check_run_checkpoint(path: str, what: str) -> None:
    """S3PRL adopts a resumed checkpoint's Args and Config whole: refuse a bad file, and any config
    string that S3PRL would eval() or look a class up by, in one line before it loads."""
    from s3prl_adapters.bridge.config_guard import check_checkpoint
    from s3prl_adapters.method.backbone import S3PRL_RUN, read_checkpoint

    ckpt = read_checkpoint(path, what=what, allow=S3PRL_RUN)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("Args"), argparse.Namespace):
        raise UserError(f"{what} {path}: not an S3PRL experiment checkpoint (no 'Args')")
    past = ckpt["Args"]
    _check_backbone_file(getattr(past, "upstream", None), getattr(past, "upstream_ckpt", None), f"{what} {path}: its -k")
    check_checkpoint(ckpt, path)


def prepare_argv(argv: List[str]) -> List[str]:
    """Validate what S3PRL would only fail on later, and fill the defaults it gets wrong."""
    from s3prl import hub

    from s3prl_adapters.bridge import compat

    args = _peek(argv)
    argv = compat.device_defaults_to_cuda(argv)
    argv = compat.torchrun_sets_only_local_rank(argv)
    resumed = _resumed_checkpoint(args)
    if resumed:
        _check_run_checkpoint(resumed, "-e" if args.past_exp else "-a")
    if args.past_exp:
        if not os.path.exists(args.past_exp):
            raise UserError(f"-e {args.past_exp}: no such checkpoint or experiment directory")
        return argv
    if args.upstream is not None and not hasattr(hub, args.upstream):
        close = difflib.get_close_matches(args.upstream, [n for n in dir(hub) if not n.startswith("_")], n=5)
        from s3prl_adapters.bridge.hubconf import UPSTREAMS

        raise UserError(
            f"-u {args.upstream}: unknown upstream; adapter upstreams: {sorted(UPSTREAMS)}"
            + (f"; close S3PRL names: {close}" if close else "")
            + " (run_downstream.py -h lists all)"
        )
    if args.downstream is None and args.mode in ("train", "evaluate", "inference"):
        raise UserError(f"-d TASK is required (the recipe to run); valid: {available_tasks()}")
    if args.downstream is not None:
        tasks = available_tasks()
        if args.downstream not in tasks:
            raise UserError(f"-d {args.downstream}: unknown task; valid: {tasks}")
        from s3prl_adapters.tasks import tasks_of_recipe

        untrained = [t for t in tasks_of_recipe(args.downstream) if not t.trains]
        if untrained and args.mode == "train":
            raise UserError(f"-d {args.downstream}: {untrained[0].key.upper()} trains nothing; score one layer with -m "
                            f"evaluate -t dev|test -l LAYER, or every layer with s3prl-adapters {untrained[0].key}")
        if args.config is None:
            config = shipped_config(args.downstream)

            several = tasks_of_recipe(args.downstream)
            if config is None and len(several) > 1:
                raise UserError(f"-d {args.downstream} runs " + " and ".join(t.key.upper() for t in several)
                                + ", chosen with -c: " + ", ".join(f"-c {t.config_path()} ({t.corpus})" for t in several)
                                + " (or their mini.yaml)")
            if config is None:
                raise UserError(
                    f"-d {args.downstream}: no config shipped for this task (PyPI S3PRL has none); pass -c CONFIG.yaml"
                )
            argv = argv + ["-c", str(config)]
    if args.config is not None and not os.path.isfile(args.config):
        raise UserError(f"-c {args.config}: no such config file")
    if args.downstream is not None:
        from s3prl_adapters.bridge.config_guard import load_config_file

        # plain YAML whose class names are class names (shipped configs pass; files from others are checked)
        load_config_file(str(args.config or shipped_config(args.downstream)), args.downstream)
    _check_backbone_file(args.upstream, args.upstream_ckpt, "-k")
    if args.upstream_ckpt is not None and not args.upstream_ckpt.startswith(("http://", "https://")):
        # -e reuses -k from the checkpoint: store it absolute so resuming works from any directory.
        argv = _replace_value(argv, ("-k", "--upstream_ckpt"), os.path.abspath(os.path.expanduser(args.upstream_ckpt)))
    return argv


def run(argv: List[str], ddp_timeout_minutes: float) -> None:
    from s3prl_adapters.bridge import compat

    compat.s3prl_hub_imports_every_upstream()  # before the runner hook imports S3PRL's runner, which imports the hub
    from s3prl_adapters.bridge.hubconf import register
    from s3prl_adapters.bridge.runner_hook import AdapterRunner

    compat.install_runtime_workarounds(compat.run_device(compat.device_defaults_to_cuda(argv)), ddp_timeout_minutes)
    register()
    argv = prepare_argv(argv)
    import s3prl.run_downstream as s3prl_launcher

    s3prl_launcher.Runner = AdapterRunner
    sys.argv = ["run_downstream.py"] + argv
    s3prl_launcher.main()


def _take_ddp_timeout(argv: List[str]):
    """Our own flag `--ddp_timeout MINUTES` (before S3PRL parses the rest), else the environment."""
    from s3prl_adapters.bridge.compat import DDP_TIMEOUT_MINUTES

    value, rest, i = os.environ.get("S3PRL_ADAPTERS_DDP_TIMEOUT_MIN"), [], 0
    source = "S3PRL_ADAPTERS_DDP_TIMEOUT_MIN"
    while i < len(argv):
        if argv[i] == "--ddp_timeout" and i + 1 < len(argv):
            value, source, i = argv[i + 1], "--ddp_timeout", i + 2
            continue
        if argv[i].startswith("--ddp_timeout="):
            value, source = argv[i].split("=", 1)[1], "--ddp_timeout"
        else:
            rest.append(argv[i])
        i += 1
    if value is None:
        return DDP_TIMEOUT_MINUTES, rest
    try:
        minutes = float(value)
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise UserError(f"{source} {value}: expected a number of minutes > 0")
    return minutes, rest


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        ddp_timeout_minutes, argv = _take_ddp_timeout(argv)
        run(argv, ddp_timeout_minutes)
    except UserError as e:
        if debug:
            raise
        print(f"run_downstream.py: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
