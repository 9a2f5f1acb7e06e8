"""`s3prl-adapters`: the package's tools (checkpoints, parameter report, ...)."""

import argparse
import sys

from .errors import UserError


def _make_tiny_wavlm(args):
    from .backbone import make_tiny_wavlm

    make_tiny_wavlm(args.out, layers=args.layers, dim=args.dim, seed=args.seed)
    print(f"wrote {args.out} (random WavLM, {args.layers} layers x {args.dim}, S3PRL {{'cfg','model'}} format)")


def _params(args):
    from .params import format_table, parameter_table, to_json

    rows = parameter_table(args.backbone)
    print(to_json(rows) if args.json else format_table(rows))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s3prl-adapters", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for expected errors too")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-tiny-wavlm", help="write a small random WavLM checkpoint in S3PRL's format")
    p.add_argument("out")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--dim", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_make_tiny_wavlm)

    p = sub.add_parser("params", help="trainable/total parameters of the six methods")
    p.add_argument("--backbone", default="base_plus", help="'base_plus' (random Base+ shape) or a WavLM .pt")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_params)
    return parser


def main(argv=None):
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
