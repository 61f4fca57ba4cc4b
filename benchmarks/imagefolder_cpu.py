"""`params/imagefolder_cpu.yaml` as a user with their own images runs it: three ImageFolders that differ in size,
channels, class count and kind (made by `scripts/make_imagefolders.py`), each through `mvc study` from scratch
(which selects its recipe on val first: `select.run_first`), timed. Writes `benchmarks/imagefolder_cpu.md` and
`.json`: per folder, label fidelity and copies of the params file's recipe ("before", its selection trial) and of
the chosen one (on val in the selection; on test in the study), and the classifier table with and without the judge
filter. The goal is at most 30 minutes each on 2 CPU cores, selection included.

    python benchmarks/imagefolder_cpu.py [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"shapes": "6 classes x 100 images, 48 px, colour shapes",
           "glyphs": "12 classes x 40 images, 24 px, grey letters",
           "textures": "8 classes x 60 images, 32 px, patches of colour photographs"}
METHODS = ("none", "randaugment", "autoaugment", "sd_naive", "mvc", "mvc_filtered")
BEFORE = {"finetune.steps": 600, "generate.guidance_text": 7.5, "generate.guidance_image": 1.5}  # the digits recipe


def before_and_after(reports: Path) -> dict:
    """The selection's MVC trials: the params file's recipe (BEFORE) and the chosen one, their val measures."""
    log = pd.read_csv(reports / "selection" / "selection.csv")
    mvc = log[log["subject"] == "mvc"]
    before = mvc[mvc["knobs"].map(lambda k: all(f"{key}={value}" in k for key, value in BEFORE.items()))]

    def pick(rows):
        return rows[["knobs", "label_fidelity", "copies", "nn_distance_vs_real"]].iloc[0].to_dict() if len(rows) else {}

    chosen = log[log["chosen"]]
    return {"before": pick(before), "after": pick(mvc[mvc["chosen"]]),
            "chosen": dict(zip(chosen["subject"], chosen["knobs"])), "selection_s": float(log["seconds"].sum())}


def run(folder: Path, study: str) -> dict:
    """One study from scratch; its wall time, peak memory, image metrics and accuracy table."""
    runs, reports = ROOT / "runs" / study, ROOT / "reports" / study
    shutil.rmtree(runs, ignore_errors=True)
    shutil.rmtree(reports, ignore_errors=True)
    start = time.time()
    subprocess.run([sys.executable, "-m", "mvc", "study", str(ROOT / "params/imagefolder_cpu.yaml"), "--no-progress",
                    f"--set=data.root={folder}", f"--set=study={study}"], check=True)
    wall = time.time() - start
    prov = json.loads((reports / "provenance.json").read_text())
    shutil.copy2(reports / "selection" / "selection.md", ROOT / "benchmarks" / f"selection_{study}.md")
    metrics = pd.read_csv(reports / "tables" / "image_metrics.csv").set_index("synthetic_set")
    table = pd.read_csv(reports / "tables" / "classification.csv").set_index("method")
    return {"study": study, "wall_s": round(wall, 1), "peak_rss_mb": prov["peak_rss_mb"], "cpu": prov["device"],
            "selection": before_and_after(reports), "backbone": prov["params"]["classify"]["backbone"],
            "warnings": json.loads((ROOT / "runs" / study / "stages" / "report.json").read_text()).get("warnings", []),
            "notebooks_s": {k: v["wall_s"] for k, v in prov["stages"].items()},
            "label_fidelity": metrics["label_fidelity"].round(3).to_dict(),
            "copies": metrics["copies"].round(3).to_dict(),
            "top1": table["top1"].to_dict(), "ci95": table["ci95"].to_dict(),
            "judge_accuracy_on_real": float(metrics["judge_accuracy_on_real"].iloc[0])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None,
                   help="where to make the ImageFolders (default: a temporary folder)")
    p.add_argument("--only", nargs="*", default=list(FOLDERS), choices=list(FOLDERS), help="the folders to run")
    args = p.parse_args()
    out = ROOT / "benchmarks/imagefolder_cpu.json"
    results = {r["study"]: r for r in json.loads(out.read_text())} if out.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp)
        if not all((data / name).is_dir() for name in args.only):
            subprocess.run([sys.executable, str(ROOT / "scripts/make_imagefolders.py"), str(data)], check=True)
        for name in args.only:
            results[f"own-{name}"] = run(data / name, f"own-{name}")
            out.write_text(json.dumps(list(results.values()), indent=2) + "\n")
    write_markdown([results[f"own-{name}"] for name in FOLDERS if f"own-{name}" in results])


def write_markdown(results: list[dict]) -> None:
    lines = ["# Your own ImageFolder on a CPU: `params/imagefolder_cpu.yaml`", "",
             "Each study from scratch with "
             "`mvc study params/imagefolder_cpu.yaml --set data.root=DIR --set study=NAME` "
             "(made by `python benchmarks/imagefolder_cpu.py`): the recipe is chosen on the folder's validation split "
             "first (`select.run_first`; test never read), then the study runs with it. Goal: at most 30 minutes each, "
             "selection included.", "", "## Time, and what the selection changed", "",
             "| ImageFolder | what | CPU | wall (min) | of it selection (min) | peak RSS (MB) | classifier chosen | "
             "label fidelity / copies before (val) | after (val) | after (test judge) | judge on real test |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        name = r["study"].removeprefix("own-")
        b, a = r["selection"]["before"], r["selection"]["after"]
        fid, cop = r["label_fidelity"], r["copies"]
        lines.append(f"| {name} | {FOLDERS[name]} | {r['cpu'].removeprefix('cpu: ')} | {r['wall_s'] / 60:.1f} | "
                     f"{r['selection']['selection_s'] / 60:.1f} | {r['peak_rss_mb']} | {r['backbone']} | "
                     f"{b.get('label_fidelity', float('nan')):.3f} / {b.get('copies', float('nan')):.3f} | "
                     f"{a.get('label_fidelity', float('nan')):.3f} / {a.get('copies', float('nan')):.3f} | "
                     f"{fid.get('mvc_coarse', float('nan')):.3f} / {cop.get('mvc_coarse', float('nan')):.3f} | "
                     f"{r['judge_accuracy_on_real']:.3f} |")
    lines += ["", "Before: the params file's recipe (" + ", ".join(f"{k}={v}" for k, v in BEFORE.items()) + "), as "
              "the selection measured it on val; after: the chosen MVC recipe, on val in the selection and as the "
              "study measured it with the judge scored on test. Label fidelity: the share of the MVC coarse-mix images "
              "the judge labels as intended (also the share `mvc_filtered` keeps); copies: the share nearer one "
              "labelled image than a third of the next.", "", "## Top-1 accuracy (%) on each folder's test split", "",
              "| ImageFolder | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    for r in results:
        lines.append(f"| {r['study'].removeprefix('own-')} | " + " | ".join(
            f"{r['top1'][m]:.1f} ± {r['ci95'][m]:.1f}" if m in r["top1"] else "" for m in METHODS) + " |")
    lines += ["", "Mean ± 95% t-interval over the 3 classifier seeds (one generative run: the interval covers the "
              "classifier's seeds only). `mvc_filtered`: MVC with only the synthetic images the judge labels as "
              "intended.", "", "## What each selection chose, and the report's warnings", ""]
    for r in results:
        lines.append(f"- **{r['study'].removeprefix('own-')}**: " + "; ".join(
            f"{k}: {v}" for k, v in r["selection"]["chosen"].items()))
        lines += [f"  - warning: {w}" for w in r["warnings"]] or ["  - no warning"]
    lines += ["", "Reports (not committed): " + ", ".join(f"`reports/{r['study']}/index.html`" for r in results)
              + "; each selection log, copied here: "
              + ", ".join(f"[`selection_{r['study']}.md`](selection_{r['study']}.md)" for r in results) + "."]
    (ROOT / "benchmarks/imagefolder_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
