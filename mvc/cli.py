"""Command line: `mvc study|check PARAMS`, and one subcommand per stage of the registry (`mvc finetune PARAMS`)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

from mvc.config import ConfigError, config_to_yaml, load_config
from mvc.resources import check_memory
from mvc.stages import STAGES

log = logging.getLogger("mvc")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mvc", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_params(p: argparse.ArgumentParser, optional: bool = False) -> argparse.ArgumentParser:
        p.add_argument("params", nargs="?" if optional else None, help="params YAML file, e.g. params/digits.yaml")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a field, e.g. --set classify.steps=100 (repeatable)")
        return p

    study = with_params(sub.add_parser("study", help="run the notebooks through papermill into reports/<study>/"))
    study.add_argument("--stages", help="notebooks to run, e.g. 01,03-05 (default: all)")
    study.add_argument("--force", action="store_true",
                       help="re-execute the notebooks and recompute their stages from scratch, even when up to date")
    study.add_argument("--no-progress", action="store_true", help="no progress bars in the terminal")
    with_params(sub.add_parser("check", help="validate a params file and print the resolved configuration"))
    for spec in STAGES:
        p = with_params(sub.add_parser(spec.name, help=f"stage {spec.name} (notebook {spec.notebook}): {spec.summary}"),
                        optional=spec.name == "report")
        p.add_argument("--force", action="store_true",
                       help="recompute the stage from scratch (deleting its outputs), even when up to date")
        if spec.name == "report":
            p.add_argument("--all", action="store_true", help="collect every reports/*/ into cross-dataset tables")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("MPLBACKEND", "Agg")  # figures are saved, never shown, from the command line
    try:
        if args.command == "report" and getattr(args, "all", False):
            from mvc.report import report_all  # deferred: each subcommand imports only what it runs

            print(report_all())
            return 0
        if args.params is None:
            raise ConfigError("a params file is required, e.g. `mvc report params/digits.yaml` or `mvc report --all`")
        if args.command == "study":
            from mvc.study import run_study  # deferred: each subcommand imports only what it runs

            run_study(args.params, args.stages, args.overrides, force=args.force, show_progress=not args.no_progress)
        elif args.command == "check":
            cfg = load_config(args.params, args.overrides)
            need = check_memory(cfg)
            print(config_to_yaml(cfg), end="")
            if need:
                print("# estimated peak memory (GB): " + ", ".join(f"{k} {v:.1f}" for k, v in need.items()))
        else:
            cfg = load_config(args.params, args.overrides)
            next(s for s in STAGES if s.name == args.command).function(cfg, force=args.force)
    except KeyboardInterrupt:
        print(f"mvc {args.command}: interrupted; run the same command again to resume (finished work is kept)",
              file=sys.stderr)
        return 130
    except (ConfigError, ValueError, OSError, RuntimeError) as err:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            err = f"disk full while writing {err.filename or 'a file'}: free space or point runs_root / reports_root " \
                  "at another disk, then run again (finished work is kept; nothing is left half-written)"
        print(f"mvc {args.command}: error: {err}", file=sys.stderr)
        if args.verbose:
            raise
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
