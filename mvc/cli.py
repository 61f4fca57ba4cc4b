"""Command line: `mvc study|check|data|caption|embed|finetune|generate|metrics|classify|report PARAMS`."""

from __future__ import annotations

import argparse
import logging
import sys

from mvc.config import ConfigError, config_to_yaml, load_config

log = logging.getLogger("mvc")


def _stage(name: str):
    """The stage function behind a subcommand, imported only when asked for (torch is slow to import)."""
    if name == "data":
        from mvc.data import prepare_dataset as fn
    elif name == "caption":
        from mvc.captioning import caption_dataset as fn
    elif name == "embed":
        from mvc.text import embed_captions as fn
    elif name == "backbone":
        from mvc.models import prepare_backbone as fn
    elif name == "finetune":
        from mvc.finetune import finetune as fn
    elif name == "generate":
        from mvc.generate import generate_all as fn
    elif name == "metrics":
        from mvc.metrics import image_metrics as fn
    elif name == "classify":
        from mvc.classify import classify_all as fn
    else:
        from mvc.report import build_report as fn
    return fn


STAGE_COMMANDS = ["data", "caption", "embed", "backbone", "finetune", "generate", "metrics", "classify", "report"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mvc", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_params(p: argparse.ArgumentParser, optional: bool = False) -> argparse.ArgumentParser:
        p.add_argument("params", nargs="?" if optional else None, help="params YAML file, e.g. params/digits.yaml")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a field, e.g. --set classify.steps=100 (repeatable)")
        return p

    study = with_params(sub.add_parser("study", help="run the notebooks through papermill into reports/<study>/"))
    study.add_argument("--stages", help="notebooks to run, e.g. 01,03-05 (default: all)")
    study.add_argument("--force", action="store_true", help="re-execute notebooks even when up to date")
    with_params(sub.add_parser("check", help="validate a params file and print the resolved configuration"))
    for name in STAGE_COMMANDS:
        p = with_params(sub.add_parser(name, help=f"run stage '{name}' alone"), optional=name == "report")
        if name == "report":
            p.add_argument("--all", action="store_true", help="collect every reports/*/ into cross-dataset tables")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        if args.command == "report" and getattr(args, "all", False):
            from mvc.report import report_all

            print(report_all())
            return 0
        if args.params is None:
            raise ConfigError("a params file is required, e.g. `mvc report params/digits.yaml` or `mvc report --all`")
        if args.command == "study":
            from mvc.study import run_study

            run_study(args.params, args.stages, args.overrides, force=args.force)
        elif args.command == "check":
            cfg = load_config(args.params, args.overrides)
            print(config_to_yaml(cfg), end="")
        else:
            cfg = load_config(args.params, args.overrides)
            _stage(args.command)(cfg)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"mvc {args.command}: error: {err}", file=sys.stderr)
        if args.verbose:
            raise
        sys.exit(2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
