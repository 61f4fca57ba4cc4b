"""Where the default digits study's time goes, before and after a change, from two runs on one machine.

Each run is `mvc study params/digits.yaml` from an empty runs folder; the script reads each run's
`provenance.json` (wall time per notebook, seconds per stage), the executed notebooks' per-cell times (papermill
records them: the import cell, the stage cell, the figures) and the tables, and writes `benchmarks/digits_budget.md`
and `.json`: per stage and per notebook before and after, what each change bought, and the study's results side by
side (classification table with its intervals, label fidelity and copies), so that a speed-up that moves a result
shows.

    python benchmarks/digits_budget.py --run --before-rev <commit>   # both runs, one after the other (~20 min)
    python benchmarks/digits_budget.py --before /tmp/base --after /tmp/new   # two finished runs' folders

A run's folder holds `runs/` and `reports/` (`mvc study ... --set runs_root=<dir>/runs --set
reports_root=<dir>/reports`). `--run` makes the "before" run from a git worktree of `--before-rev` and the
"after" run from this working tree, one after the other, with nothing else on the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
STUDY_GOAL_S = 300  # issue: `make study` from an empty runs/ in at most five minutes on 2 cores
CHANGES = {  # stage -> what this round changed there (the "after" run)
    "backbone": "bf16 autocast of the VAE's and UNet's pretraining steps where the CPU computes bf16 natively "
                "(`backbone.surrogate.mixed_precision: auto`); diffusers' classic attention kernel instead of "
                "SDPA's flash kernel at 16 tokens of 8-channel heads (`backbone.surrogate.attention: classic`)",
    "finetune": "bf16 autocast where native (`finetune.mixed_precision: auto`); the classic attention kernel",
    "generate": "the UNet in bf16 while sampling where native (`generate.cpu_precision: auto`); the classic "
                "attention kernel",
    "classify": "bf16 autocast of each training step where native (`classify.mixed_precision: auto`); crop and "
                "flip drawn per image but applied to the batch in one indexing op (not 64 v2 calls a step)",
}


def cpu_description() -> str:
    """The CPU model and the flags that decide the precision (AVX2, AVX512-BF16, AMX)."""
    model, flags = platform.processor() or "?", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    named = [n for f, n in (("avx2", "AVX2"), ("avx512_bf16", "AVX512-BF16"), ("amx_tile", "AMX")) if f in flags]
    return f"{model} ({', '.join(named) or 'none of AVX2, AVX512-BF16, AMX'}), {os.cpu_count()} cores"


def run_study(folder: Path, tree: Path) -> None:
    """`mvc study params/digits.yaml` of the code in `tree`, its outputs under `folder`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, "-m", "mvc", "study", str(tree / "params/digits.yaml"), "--force",
                    "--set", f"runs_root={folder / 'runs'}", "--set", f"reports_root={folder / 'reports'}"],
                   check=True, cwd=tree, env=env)


def cell_seconds(notebook: Path) -> dict[str, float]:
    """Seconds per kind of cell of an executed notebook: the import cell (the one that opens the study), the cells
    that call a stage, and the rest (figures, tables, prose)."""
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    out = {"imports": 0.0, "stages": 0.0, "figures and tables": 0.0}
    for c in cells:
        d = c.get("metadata", {}).get("papermill", {}).get("duration") or 0.0
        src = "".join(c["source"])
        if {"parameters", "injected-parameters"} & set(c.get("metadata", {}).get("tags", [])):
            continue
        kind = "imports" if "open_study(" in src else "stages" if any(s in src for s in (
            "prepare_dataset", "caption_dataset", "prepare_backbone", "generate_all", "image_metrics(cfg)",
            "classify_all", "build_report")) else "figures and tables"
        out[kind] += d
    return {k: round(v, 1) for k, v in out.items()}


def read_run(folder: Path) -> dict:
    reports = folder / "reports" / "digits"
    prov = json.loads((reports / "provenance.json").read_text())
    stages = {k: v for nb in prov["stages"].values() for k, v in nb["stage_seconds"].items()}
    notebooks = {}
    for key, nb in sorted(prov["stages"].items()):
        cells = cell_seconds(reports / "notebooks" / nb["notebook"])
        notebooks[key] = {"wall_s": nb["wall_s"], "peak_rss_mb": nb["peak_rss_mb"], **cells,
                          "kernel and papermill": round(nb["wall_s"] - sum(cells.values()), 1)}
    table = pd.read_csv(reports / "tables/classification.csv")
    metrics = pd.read_csv(reports / "tables/image_metrics.csv")
    return {"device": prov["device"], "git_revision": prov["git_revision"], "total_wall_s": prov["total_wall_s"],
            "stage_s": stages, "notebooks": notebooks,
            "classification": table[["method", "top1", "ci95"]].set_index("method").to_dict("index"),
            "fidelity": metrics.set_index("synthetic_set")[["label_fidelity", "copies"]].to_dict("index")}


def report(before: dict, after: dict, cpu: str) -> list[str]:
    lines = ["# Where the digits study's time goes: before and after", "",
             f"CPU: {cpu}. Both runs on this machine, one after the other, nothing else on the cores; from an empty "
             "runs folder (`mvc study params/digits.yaml --force`).", "",
             f"Before: git {before['git_revision'][:10]}; after: git {after['git_revision'][:10]} (its working tree).",
             "", "| | before (s) | after (s) | ratio |", "|---|---|---|---|",
             f"| study (all six notebooks) | {before['total_wall_s']:.0f} | {after['total_wall_s']:.0f} | "
             f"{before['total_wall_s'] / after['total_wall_s']:.2f}x |", "",
             f"The goal of {STUDY_GOAL_S} s is {'met' if after['total_wall_s'] <= STUDY_GOAL_S else 'not met'}.", "",
             "## Per stage", "", "| stage | before (s) | after (s) | ratio | what changed |", "|---|---|---|---|---|"]
    for k, v in before["stage_s"].items():
        a = after["stage_s"].get(k, float("nan"))
        ratio = f"{v / a:.2f}x" if a > 1 else ""
        lines.append(f"| {k} | {v:.1f} | {a:.1f} | {ratio} | {CHANGES.get(k, '')} |")
    lines += ["", "## Per notebook (seconds: wall, and its parts from papermill's per-cell times)", "",
              "| notebook | before | after | after: imports | after: stages | after: figures and tables | "
              "after: kernel and papermill | after: peak RSS (MB) |", "|---|---|---|---|---|---|---|---|"]
    for k, b in before["notebooks"].items():
        a = after["notebooks"][k]
        lines.append(f"| {k} | {b['wall_s']} | {a['wall_s']} | {a['imports']} | {a['stages']} | "
                     f"{a['figures and tables']} | {a['kernel and papermill']} | {a['peak_rss_mb']} |")
    lines += ["", "## The results, before and after (top-1 %, mean and 95% interval over 5 classifier seeds)", "",
              "| method | before | after | after within before's interval |", "|---|---|---|---|"]
    for m, b in before["classification"].items():
        a = after["classification"].get(m)
        if a is None:
            continue
        inside = abs(a["top1"] - b["top1"]) <= b["ci95"]
        lines.append(f"| {m} | {b['top1']:.2f} ± {b['ci95']:.2f} | {a['top1']:.2f} ± {a['ci95']:.2f} | "
                     f"{'yes' if inside else 'NO'} |")
    lines += ["", "| synthetic set | fidelity before | fidelity after | copies before | copies after |",
              "|---|---|---|---|---|"]
    for g, b in before["fidelity"].items():
        a = after["fidelity"].get(g, {})
        lines.append(f"| {g} | {b['label_fidelity']:.3f} | {a.get('label_fidelity', float('nan')):.3f} | "
                     f"{b['copies']:.3f} | {a.get('copies', float('nan')):.3f} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, default=Path("/tmp/digits-budget/before"))
    p.add_argument("--after", type=Path, default=Path("/tmp/digits-budget/after"))
    p.add_argument("--run", action="store_true", help="make both runs first")
    p.add_argument("--before-rev", default="HEAD", help="the commit of the 'before' run (with --run)")
    args = p.parse_args()
    if args.run:
        tree = args.before.parent / "before-tree"
        subprocess.run(["git", "worktree", "add", "-f", "--detach", str(tree), args.before_rev], cwd=ROOT, check=True)
        run_study(args.before, tree)
        run_study(args.after, ROOT)
    before, after = read_run(args.before), read_run(args.after)
    cpu = cpu_description()
    out = {"cpu": cpu, "before": before, "after": after}
    (ROOT / "benchmarks/digits_budget.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = report(before, after, cpu)
    (ROOT / "benchmarks/digits_budget.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
