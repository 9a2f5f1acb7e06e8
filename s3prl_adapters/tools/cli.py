"""`s3prl-adapters`: the package's tools (checkpoints, parameter report, ...)."""

import argparse
import sys

from s3prl_adapters.errors import UserError


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
    from s3prl_adapters.data.mini_superb import make_mini_superb

    manifest = make_mini_superb(args.out, size=args.size, seed=args.seed, workers=args.workers, tasks=args.tasks)
    print(f"wrote {manifest['utterances']} utterances ({manifest['audio_hours']} h, "
          f"{manifest['bytes'] / 1e6:.0f} MB) to {args.out} in {manifest['seconds']} s")


def _corpus_overrides(args):
    from s3prl_adapters.data.mini_superb import corpus_overrides

    print(corpus_overrides(args.task, args.root))


def _prepare_librispeech(args):
    from s3prl_adapters.data.prepare import librispeech_buckets

    counts = librispeech_buckets(args.root, args.out, args.splits, ext=args.ext)
    for split, n in counts.items():
        print(f"{args.out}/{split}.csv: {n} utterances")


def _prepare_iemocap(args):
    from s3prl_adapters.data.prepare import iemocap_meta_data

    counts = iemocap_meta_data(args.root, args.out)
    print(f"wrote {args.out}/Session1..5/{{train,test}}_meta_data.json; test utterances per fold: {counts}")


def _prepare_voxceleb1(args):
    import os

    import numpy as np

    from s3prl_adapters.data.prepare import check_trial_list, make_trials, voxceleb_files, write_lines

    dev = voxceleb_files(os.path.join(args.root, "dev", "wav"))
    out = args.dev_trials or os.path.join(args.root, "dev_trials.txt")
    trials = make_trials(dev, args.n_dev_trials, np.random.default_rng(args.seed))
    write_lines(out, trials)
    print(f"wrote {out} ({len(trials)} dev trials over {len(dev)} speakers; read by the recipe at start-up)")
    if args.test_trials:
        n = check_trial_list(args.test_trials, os.path.join(args.root, "test", "wav"))
        print(f"checked {args.test_trials}: {n} trials, every file present, both labels")


def _pretrain_tiny(args):
    from dataclasses import fields

    from s3prl_adapters.tools.pretrain import PretrainConfig, pretrain_tiny

    cfg = PretrainConfig(**{f.name: getattr(args, f.name) for f in fields(PretrainConfig)})
    report = pretrain_tiny(args.out, cfg)
    print(f"wrote {args.out}; final masked-prediction loss {report['final_loss']:.3f} "
          f"(curve in {args.out}.json); {report['seconds_this_run']} s")


def _submit(args):
    from s3prl_adapters.tools.submission import build_submission

    er = {k: getattr(args, f"er_fold{k}") for k in range(1, 6) if getattr(args, f"er_fold{k}")}
    members = build_submission(args.output, asr=args.asr, ic=args.ic, er=er, sv=args.sv)
    print(f"wrote {args.output}: " + ", ".join(members))
    if er and len(er) < 5:
        print("note: SUPERB scores ER only with all 5 folds")


def _convert_hf(args):
    from s3prl_adapters.method.backbone import load_wavlm, save_checkpoint

    save_checkpoint(load_wavlm(args.folder), args.out)  # load_wavlm validates the converted weights strictly
    print(f"wrote {args.out} (S3PRL {{'cfg','model'}} WavLM from {args.folder})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s3prl-adapters", description=__doc__)
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

    p = sub.add_parser("make-mini-superb", help="generate the four stand-in corpora (offline, espeak-ng)")
    p.add_argument("out")
    p.add_argument("--size", default="small", choices=["small", "medium"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tasks", nargs="+", default=None, help="subset of asr fluent_commands emotion sv_voxceleb1")
    p.set_defaults(func=_make_mini_superb)

    p = sub.add_parser("corpus-overrides", help="print the -o string pointing a recipe at a make-mini-superb corpus")
    p.add_argument("task", choices=["asr", "fluent_commands", "emotion", "sv_voxceleb1"])
    p.add_argument("root")
    p.set_defaults(func=_corpus_overrides)

    p = sub.add_parser("prepare-librispeech", help="write the ASR recipe's length-bucket CSVs (non-interactive)")
    p.add_argument("root", help="LibriSpeech folder holding train-clean-100/, dev-clean/, test-clean/")
    p.add_argument("out", help="bucket folder, e.g. ROOT/len_for_bucket (the config's bucket_file)")
    p.add_argument("--splits", nargs="+", default=["train-clean-100", "dev-clean", "test-clean"])
    p.add_argument("--ext", default=".flac")
    p.set_defaults(func=_prepare_librispeech)

    p = sub.add_parser("prepare-iemocap", help="write the emotion recipe's leave-one-session-out meta data")
    p.add_argument("root", help="IEMOCAP folder holding Session1..Session5")
    p.add_argument("out", help="meta-data folder (the config's meta_data)")
    p.set_defaults(func=_prepare_iemocap)

    p = sub.add_parser("prepare-voxceleb1", help="write the ASV recipe's dev trial list and check the test list")
    p.add_argument("root", help="VoxCeleb1 folder holding dev/wav and test/wav")
    p.add_argument("--test-trials", help="official trial list to check (e.g. veri_test2.txt)")
    p.add_argument("--dev-trials", help="where to write the dev list (default ROOT/dev_trials.txt)")
    p.add_argument("--n-dev-trials", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_prepare_voxceleb1)

    sub.add_parser("bench", help="training/inference cost of every method vs S3PRL fine-tuning (see bench --help)")

    p = sub.add_parser("submit", help="validate S3PRL test predictions and zip them in the SUPERB layout")
    p.add_argument("--asr", help="asr experiment folder (test-clean-noLM-hyp.ark)")
    p.add_argument("--ic", help="fluent_commands experiment folder (test_predict.csv)")
    for k in range(1, 6):
        p.add_argument(f"--er-fold{k}", dest=f"er_fold{k}", help=f"emotion fold{k} experiment folder")
    p.add_argument("--sv", help="sv_voxceleb1 experiment folder (test_predict.txt)")
    p.add_argument("-o", "--output", default="predict.zip")
    p.set_defaults(func=_submit)

    from dataclasses import fields

    from s3prl_adapters.tools.pretrain import PretrainConfig

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
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        if args.debug:
            raise
        print(f"s3prl-adapters {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
