"""The ``radfm`` command: one sub-command per job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]


def _demo(args: argparse.Namespace) -> int:
    from radfm.demo_model import run

    result = run(steps=args.steps)
    if result["accuracy"] <= result["majority"]:
        print("the model did not beat the majority baseline: it has not learned from the images")
        return 1
    return 0


def _model_info(args: argparse.Namespace) -> int:
    from radfm.model import factory, presets

    cfg = presets.preset(args.preset)
    model = factory.build_on_meta(cfg)
    print(f"{cfg.name}: {factory.format_counts(factory.count_parameters(model))}")
    return 0


def _import_checkpoint(args: argparse.Namespace) -> int:
    from radfm.model.convert import import_checkpoint

    report = import_checkpoint(args.path, args.out, preset=args.preset, tokenizer_dir=args.tokenizer,
                               strict=not args.lenient)
    print(report.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radfm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="build the tiny model, train it briefly on phantoms, answer questions")
    p.add_argument("--steps", type=int, default=120)
    p.set_defaults(func=_demo)

    p = sub.add_parser("model-info", help="parameter counts of a preset (built on the meta device)")
    p.add_argument("--preset", default="tiny")
    p.set_defaults(func=_model_info)

    p = sub.add_parser("import-checkpoint", help="map the released RadFM checkpoint onto this model")
    p.add_argument("path", help="pytorch_model.bin / .safetensors file or a folder of shards")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.add_argument("--preset", default="base")
    p.add_argument("--tokenizer", default=None, help="local LLaMA tokenizer directory")
    p.add_argument("--lenient", action="store_true", help="report unmapped keys instead of failing")
    p.set_defaults(func=_import_checkpoint)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from radfm.paths import configure_caches

    configure_caches()
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
