"""`params/digits_full.yaml` (the whole study design on digits) from scratch, timed against its hour.

Runs `mvc study params/digits_full.yaml` after deleting the study's work folder, then reads its provenance
(wall time and peak memory per notebook) and stage records (seconds per stage) and writes
`benchmarks/digits_full.md` and `.json`. The report itself is `reports/digits_full/`.

    python benchmarks/digits_full.py [--no-run]   (--no-run: only tabulate the last run)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 5400  # issue 33: the whole design, replicated, in at most 90 minutes on 2 cores


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-run", action="store_true")
    p.add_argument("--note", default="", help="a line on how the run was made, written under the tables")
    args = p.parse_args()
    from mvc import state
    from mvc.config import load_config
    from mvc.stages import STAGES

    cfg = load_config(ROOT / "params/digits_full.yaml")
    wall = None
    if not args.no_run:
        shutil.rmtree(cfg.paths.run, ignore_errors=True)
        start = time.time()
        subprocess.run([sys.executable, "-m", "mvc", "study", str(ROOT / "params/digits_full.yaml"), "--force",
                        "--no-progress"], check=True)
        wall = time.time() - start
    prov = json.loads(cfg.paths.provenance.read_text())
    nb = prov["stages"]
    recorded = {k: v for nb_ in prov["stages"].values() for k, v in nb_.get("stage_seconds", {}).items()}
    # the stage records of runs/ where they are, else what the provenance kept of them (a run made elsewhere)
    sec = {s.name: state.stage_info(cfg, s.name).get("seconds", recorded.get(s.name, float("nan"))) for s in STAGES}
    runs = state.stage_info(cfg, "classify").get("runs") or sum(1 for _ in open(cfg.paths.report / "results.csv")) - 1
    study_s = sum(v["wall_s"] for v in nb.values())
    result = {"device": prov["device"], "budget_s": BUDGET_S, "study_s": round(study_s, 1),
              "wall_s_with_start_up": round(wall, 1) if wall else None, "stage_s": sec,
              "notebooks": {k: {"wall_s": v["wall_s"], "peak_rss_mb": v["peak_rss_mb"]} for k, v in nb.items()},
              "peak_rss_mb": max(v["peak_rss_mb"] for v in nb.values()),
              "units": len(cfg.units()), "shots": cfg.data.shot_levels, "replicates": cfg.replicates,
              "classifier_runs": runs}
    (ROOT / "benchmarks/digits_full.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# The whole digits design on the CPU: `params/digits_full.yaml`", "",
             f"Device: {prov['device']}. Shots {cfg.data.shot_levels}, {cfg.replicates} replicates of the generative "
             f"pipeline ({result['units']} units: fine-tuning and generation each), {len(cfg.classify.seeds)} "
             f"classifier seeds, {result['classifier_runs']} classifier runs.", "",
             f"Study: {study_s / 60:.1f} min (budget {BUDGET_S / 60:.0f} min: "
             f"{'within' if study_s <= BUDGET_S else 'OVER'}); peak memory {result['peak_rss_mb']} MB.", "",
             "| notebook | wall (s) | peak RSS (MB) |", "|---|---|---|"]
    lines += [f"| {k} | {v['wall_s']} | {v['peak_rss_mb']} |" for k, v in sorted(nb.items())]
    lines += ["", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in sec.items()]
    lines += ["", "The report: `reports/digits_full/index.html`."] + (["", f"Note: {args.note}"] if args.note else [])
    (ROOT / "benchmarks/digits_full.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
