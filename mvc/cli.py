"""Command line: `mvc study|check PARAMS`, and one subcommand per stage of the registry (`mvc finetune PARAMS`)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

from mvc.config import ConfigError, config_to_yaml, load_config
from mvc.memory import STAGE_PARTS
from mvc.resources import check_memory
from mvc.runtime import GPU_MEMORY_ENV, on_cpu
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
    study.add_argument("--notebooks", help="notebooks to run, e.g. 01,03-05 (default: all)")
    study.add_argument("--force", action="store_true",
                       help="re-execute the notebooks and recompute their stages from scratch, even when up to date")
    study.add_argument("--no-progress", action="store_true", help="no progress bars in the terminal")
    check = with_params(sub.add_parser("check", help="validate a params file, print the resolved configuration and "
                                                     "the predicted peak memory of each stage"))
    check.add_argument("--gpu-memory", type=float, metavar="GiB",
                       help="predict for a GPU with this much memory (default: the card present, else this CPU)")
    select = with_params(sub.add_parser("select",
                                        help="choose the recipe (fine-tuning, guidance, augmentation knobs) on "
                                             "the validation split and image measures, never test, and "
                                             "write it to a params file"))
    select.add_argument("--out", help="the params file to write (default: <params>_selected.yaml beside it)")
    select.add_argument("--log-copy", metavar="DIR", help="also copy the selection log there (e.g. benchmarks)")
    sub.add_parser("params", help="print the parameter reference (every field, its type, default and meaning) as "
                                  "Markdown, generated from the schema: `mvc params > docs/params.md`")
    for spec in STAGES:
        p = with_params(sub.add_parser(spec.name, help=f"stage {spec.name} (notebook {spec.notebook}): {spec.summary}"),
                        optional=spec.name == "report")
        p.add_argument("--force", action="store_true",
                       help="recompute the stage from scratch (deleting its outputs), even when up to date")
        if spec.name == "report":
            p.add_argument("--all", action="store_true", help="collect every reports/*/ into cross-dataset tables")
    return parser


def print_memory_model(cfg, gpu_memory: float | None) -> None:
    """The memory model's prediction per stage on the device the study will run on (or a card of `gpu_memory`
    GiB), then whether it fits: a DoesNotFit error names the stage and the setting to lower."""

    from mvc.memory import capacity_gib, predict, refuse_what_cannot_fit

    device = "cuda" if gpu_memory or not on_cpu(cfg.device) else "cpu"
    capacity = gpu_memory or capacity_gib(device)
    where = f"a GPU of {capacity:.0f} GiB" if device == "cuda" else f"this CPU's {capacity:.0f} GiB of host memory"
    print(f"# predicted peak memory per stage on {where} (memory model, mvc/memory.py):")
    preds = predict(cfg, device, capacity)
    for p in preds:
        print(f"#   {p.line()}")
    refuse_what_cannot_fit(preds, capacity, device)
    print("# every stage fits")


def reports_root(params: str | None, overrides: list[str]):
    """Where `mvc report --all` looks: the params file's reports root, a `--set reports_root=...`, or the default."""
    if params is not None:
        return load_config(params, overrides).paths.report.parent
    from mvc.paths import resolve_path

    roots = [o.partition("=")[2].strip() for o in overrides if o.partition("=")[0].strip() == "reports_root"]
    return resolve_path(roots[-1]) if roots and roots[-1] else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("MPLBACKEND", "Agg")  # figures are saved, never shown, from the command line
    try:
        if os.environ.get(GPU_MEMORY_ENV):
            from mvc.runtime import cap_gpu_memory

            cap_gpu_memory()
        if args.command == "report" and getattr(args, "all", False):
            from mvc.report import report_all  # deferred: each subcommand imports only what it runs

            print(report_all(reports_root(args.params, args.overrides)))
            return 0
        if args.command == "params":
            from mvc.params_reference import reference

            print(reference(), end="")
            return 0
        if args.params is None:
            raise ConfigError("a params file is required, e.g. `mvc report params/digits.yaml` or `mvc report --all`")
        if args.command == "study":
            from mvc.study import run_study  # deferred: each subcommand imports only what it runs

            run_study(args.params, args.notebooks, args.overrides, force=args.force,
                      show_progress=not args.no_progress)
        elif args.command == "select":
            from mvc.paths import resolve_path
            from mvc.select import run_selection  # deferred: it imports every stage's module

            cfg = load_config(args.params, args.overrides)
            out = run_selection(cfg, resolve_path(args.params), resolve_path(args.out) if args.out else None,
                                resolve_path(args.log_copy) if args.log_copy else None, args.overrides)
            print(f"chosen recipe written to {out}; the log: {cfg.paths.report / 'selection' / 'selection.md'}")
        elif args.command == "check":
            cfg = load_config(args.params, args.overrides)
            print(config_to_yaml(cfg), end="")
            if cfg.backbone.kind == "surrogate":
                need = check_memory(cfg)
                print("# estimated peak memory (GB): " + ", ".join(f"{k} {v:.1f}" for k, v in need.items()))
            else:
                print_memory_model(cfg, args.gpu_memory)
            from mvc.weights import required_weights

            for w in required_weights(cfg):
                print(f"# weights {w.field}: {w.name}: " + ("cached" if w.cached else f"MISSING: {w.fetch}"))
            if cfg.backbone.kind == "pretrained":
                from mvc.gpu_bill import gpu_bill

                bill = gpu_bill(cfg)
                for row in bill:
                    print(f"# GPU bill ({row['how']}): {row['stage']}: {row['s'] / 3600:.2f} h")
                if bill:
                    print(f"# GPU bill: {sum(r['s'] for r in bill) / 3600:.1f} h on one H100/H200-class GPU "
                          f"(mvc/gpu_bill.py says how each row is counted)")
        else:
            cfg = load_config(args.params, args.overrides)
            if args.command in STAGE_PARTS and cfg.backbone.kind == "pretrained":
                check_memory(cfg, args.command)  # a setting that cannot fit is refused before any model loads
            from mvc.pipeline import stage_function  # deferred: it imports every stage's module

            stage_function(args.command)(cfg, force=args.force)
    except KeyboardInterrupt:
        # one line, not the tracebacks that the kernel's shutdown logs on its way out (nbclient, asyncio)
        logging.disable(logging.CRITICAL)
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
