"""`params/imagefolder_cpu.yaml` as a user with their own images runs it: two ImageFolders that differ in size,
channels and class count (made by `scripts/make_imagefolders.py`), each through `mvc study` from scratch, timed.
Writes `benchmarks/imagefolder_cpu.md` and `.json`; the goal is at most 20 minutes each on 2 CPU cores.

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
FOLDERS = {"shapes": "6 classes x 100 images, 48 px, colour", "glyphs": "12 classes x 40 images, 24 px, grey"}


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
    metrics = pd.read_csv(reports / "tables" / "image_metrics.csv").set_index("synthetic_set")
    table = pd.read_csv(reports / "tables" / "classification.csv").set_index("method")
    return {"study": study, "wall_s": round(wall, 1), "peak_rss_mb": prov["peak_rss_mb"],
            "notebooks_s": {k: v["wall_s"] for k, v in prov["stages"].items()},
            "label_fidelity": metrics["label_fidelity"].round(3).to_dict(), "copies": metrics["copies"].round(3).to_dict(),
            "top1": table["top1"].to_dict(), "ci95": table["ci95"].to_dict(),
            "judge_accuracy_on_real": float(metrics["judge_accuracy_on_real"].iloc[0])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="where to make the ImageFolders (default: a temporary folder)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp)
        subprocess.run([sys.executable, str(ROOT / "scripts/make_imagefolders.py"), str(data)], check=True)
        results = [run(data / name, f"own-{name}") for name in FOLDERS]
    (ROOT / "benchmarks/imagefolder_cpu.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Your own ImageFolder on a CPU: `params/imagefolder_cpu.yaml`", "",
             "Each study from scratch with `mvc study params/imagefolder_cpu.yaml --set data.root=DIR --set study=NAME` "
             "on this repository's 2-core machine; goal: at most 20 minutes.", "",
             "| ImageFolder | what | wall (min) | peak RSS (MB) | label fidelity MVC / naive | copies MVC | "
             "none | randaugment | mvc |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in zip(FOLDERS, results):
        fid, cop = r["label_fidelity"], r["copies"]
        acc = {m: f"{r['top1'][m]:.1f} ± {r['ci95'][m]:.1f}" for m in ("none", "randaugment", "mvc")}
        lines.append(f"| {name} | {FOLDERS[name]} | {r['wall_s'] / 60:.1f} | {r['peak_rss_mb']} | "
                     f"{fid.get('mvc_coarse', float('nan')):.3f} / {fid.get('sd_naive', float('nan')):.3f} | "
                     f"{cop.get('mvc_coarse', float('nan')):.3f} | {acc['none']} | {acc['randaugment']} | {acc['mvc']} |")
    lines += ["", "Top-1 accuracy (%) on each folder's test split, mean ± 95% interval over 3 classifier seeds. "
              "Reports: `reports/own-shapes/index.html`, `reports/own-glyphs/index.html` (not committed)."]
    (ROOT / "benchmarks/imagefolder_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
