"""`s3prl-adapters`: the package's tools (checkpoints, parameter report, stand-in corpora, corpus
preparation, cost benchmark, SUPERB submission, pretraining). Every command imports what it needs
when it runs, so `--help`, `submit` and the like start without torch."""

import argparse
import sys

from s3prl_adapters.errors import UserError
from s3prl_adapters.tasks import PAPER_TASKS, TASKS


def _make_tiny_wavlm(args):
    from s3prl_adapters.method.backbone import make_tiny_wavlm

    make_tiny_wavlm(args.out, layers=args.layers, dim=args.dim, seed=args.seed, large=args.large)
    layout = "pre-LN (Large layout)" if args.large else "post-LN (Base layout)"
    print(f"wrote {args.out} (random WavLM, {args.layers} layers x {args.dim}, {layout}, S3PRL {{'cfg','model'}} format)")


def _params(args):
    from s3prl_adapters.method.params import format_table, parameter_table, to_json

    rows = parameter_table(args.backbone)
    print(to_json(rows) if args.json else format_table(rows))


def _make_mini_superb(args):
    from s3prl_adapters.tasks import make_mini_superb

    manifest = make_mini_superb(args.out, size=args.size, seed=args.seed, workers=args.workers, tasks=args.tasks)
    print(f"wrote {manifest['utterances']} utterances ({manifest['audio_hours']} h, "
          f"{manifest['bytes'] / 1e6:.0f} MB) to {args.out} in {manifest['seconds']} s")


def _corpus_overrides(args):
    from s3prl_adapters.tasks import corpus_overrides

    print(corpus_overrides(args.task, args.root))


def _pretrain_tiny(args):
    from dataclasses import fields

    from s3prl_adapters.tools.pretrain import PretrainConfig, pretrain_tiny

    cfg = PretrainConfig(**{f.name: getattr(args, f.name) for f in fields(PretrainConfig)})
    report = pretrain_tiny(args.out, cfg)
    print(f"wrote {args.out}; final masked-prediction loss {report['final_loss']:.3f} "
          f"(curve in {args.out}.json); {report['seconds_this_run']} s")


def _submit(args):
    from s3prl_adapters.tools.submission import build_submission, experiments_from_args, incomplete_folds, missing_members

    experiments = experiments_from_args(args)
    members = build_submission(args.output, **experiments)
    print(f"wrote {args.output}: " + ", ".join(members))
    missing = missing_members(members)
    if missing:
        print(f"SUPERB members not in it ({len(missing)}): " + ", ".join(missing))
    note = incomplete_folds(experiments)
    if note:
        print(note)


def _convert_hf(args):
    from s3prl_adapters.method.backbone import load_wavlm, save_checkpoint

    save_checkpoint(load_wavlm(args.folder), args.out)  # load_wavlm validates the converted weights strictly
    print(f"wrote {args.out} (S3PRL {{'cfg','model'}} WavLM from {args.folder})")


def _export(args):
    from s3prl_adapters.tools.predict import export_command

    return export_command(args)


def _predict(args):
    from s3prl_adapters.tools.predict import predict_command

    return predict_command(args)


def _verify(args):
    from s3prl_adapters.tools.predict import verify_command

    return verify_command(args)


def _render(args):
    from s3prl_adapters.tools.render import render_file

    text = render_file(args.json_file)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_parser() -> argparse.ArgumentParser:
    from s3prl_adapters import __version__

    parser = argparse.ArgumentParser(prog="s3prl-adapters", description=__doc__)
    parser.add_argument("--version", action="version", version=f"s3prl-adapters {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for expected errors too")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-tiny-wavlm", help="write a small random WavLM checkpoint in S3PRL's format")
    p.add_argument("out")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--dim", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--large", action="store_true", help="WavLM Large's layout (pre-LN, LayerNorm CNN, normalize)")
    p.set_defaults(func=_make_tiny_wavlm)

    p = sub.add_parser("convert-hf", help="convert a transformers WavLM folder (config.json + weights) to S3PRL's format")
    p.add_argument("folder")
    p.add_argument("out")
    p.set_defaults(func=_convert_hf)

    p = sub.add_parser("params", help="trainable/total parameters of the six methods")
    p.add_argument("--backbone", default="base_plus",
                   help="'base_plus' or 'large' (random weights of that shape), or a WavLM checkpoint")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_params)

    p = sub.add_parser("make-mini-superb", help="generate stand-in corpora in the recipes' layouts (offline, espeak-ng)")
    p.add_argument("out")
    p.add_argument("--size", default="small", choices=["small", "medium"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tasks", nargs="+", default=None, choices=list(TASKS), metavar="TASK",
                   help=f"any of {list(TASKS)} (default: the paper's four, {PAPER_TASKS})")
    p.set_defaults(func=_make_mini_superb)

    p = sub.add_parser("corpus-overrides", help="print the -o string pointing a recipe at a make-mini-superb corpus")
    p.add_argument("task", choices=list(TASKS))
    p.add_argument("root")
    p.set_defaults(func=_corpus_overrides)

    for task in TASKS.values():  # prepare-librispeech, prepare-iemocap, prepare-voxceleb1, ...
        task.add_prepare_command(sub)

    sub.add_parser("bench", help="training/inference cost of every method vs S3PRL fine-tuning (see bench --help)")
    sub.add_parser("tune", help="choose an upstream's learning rates for a task on dev, with Optuna (see tune --help)")

    p = sub.add_parser("export", help="one file per trained task: what predict needs from a run's checkpoint")
    p.add_argument("checkpoint", help="a checkpoint run_downstream.py wrote (EXPDIR/dev-best.ckpt, states-N.ckpt)")
    p.add_argument("-o", "--output", required=True, help="the adapter set to write, e.g. ic.adapter")
    p.add_argument("--backbone", help="the WavLM the run was trained on (default: the run's -k)")
    p.add_argument("--no-threshold", action="store_true", help="ASV: skip the dev-EER threshold (no dev pass)")
    p.add_argument("--device", default=None, help="for the ASV threshold's dev pass (default: cuda when available)")
    p.set_defaults(func=_export)

    p = sub.add_parser("predict", help="answer every task of the given adapter sets for audio files (JSON lines)")
    p.add_argument("--backbone", required=True, help="the WavLM the sets were trained on")
    p.add_argument("--adapters", nargs="+", required=True, help="exported adapter sets (answers are keyed by file stem)")
    p.add_argument("inputs", nargs="*", help="audio files, folders (recursive) or text lists of paths (may follow "
                   "--adapters: the first non-adapter file ends that list)")
    p.add_argument("-o", "--output", help="JSON-lines file (default: standard output)")
    p.add_argument("--embeddings", help="folder for ASV embeddings (.npy; default: embeddings/ beside the output)")
    p.add_argument("--batch-size", type=int, default=8, help="files per backbone pass, grouped by length; each file is "
                   "answered as it is alone (its CNN alone, the encoder batched with a mask, its own frames): batch 1 "
                   "is the recipes' batch-1 evaluation bit for bit, larger batches equal it up to float32 rounding")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.set_defaults(func=_predict)

    p = sub.add_parser("verify", help="speaker verification of two files: score and same/different at the stored threshold")
    p.add_argument("--backbone", required=True)
    p.add_argument("--adapters", nargs="+", required=True, help="exactly one ASV adapter set among them")
    p.add_argument("files", nargs="*", metavar="A.wav B.wav", help="the two recordings")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_verify)

    p = sub.add_parser("render", help="a results.json of run_benchmarks.sh or a bench --json output as the Markdown "
                                      "tables the docs show")
    p.add_argument("json_file", metavar="JSON")
    p.add_argument("-o", "--output", help="write the Markdown here (default: standard output)")
    p.set_defaults(func=_render)

    p = sub.add_parser("qbe", help="SUPERB's QbE protocol: -d quesst14_dtw on every layer on dev, the best on test, "
                                   "scored (MTWV)")
    from s3prl_adapters.tools.qbe import add_arguments as qbe_arguments

    qbe_arguments(p)

    p = sub.add_parser("submit", help="validate S3PRL test predictions and zip them in the SUPERB layout")
    from s3prl_adapters.tools.submission import add_arguments

    add_arguments(p)
    p.add_argument("-o", "--output", default="predict.zip")
    p.set_defaults(func=_submit)

    from dataclasses import fields

    from s3prl_adapters.tools.pretrain_config import PretrainConfig

    p = sub.add_parser("pretrain-tiny", help="self-supervised pretraining of a small WavLM on generated speech")
    p.add_argument("out")
    for f in fields(PretrainConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=type(f.default), default=f.default)
    p.set_defaults(func=_pretrain_tiny)
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # its own parser (it re-invokes itself per method)
        from s3prl_adapters.tools.bench import main as bench_main

        return bench_main(argv[1:])
    if argv[:1] == ["tune"]:  # its own parser (run_downstream.py's flags and the study's)
        from s3prl_adapters.tools.tune import main as tune_main

        try:
            return tune_main(argv[1:])
        except UserError as e:
            if "--debug" in argv:
                raise
            print(f"s3prl-adapters tune: error: {e}", file=sys.stderr)
            sys.exit(2)
    args = build_parser().parse_args(argv)
    if getattr(args, "device", "unset") is None:
        args.device = _default_device()
    try:
        code = args.func(args)
    except UserError as e:
        if args.debug:
            raise
        print(f"s3prl-adapters {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
