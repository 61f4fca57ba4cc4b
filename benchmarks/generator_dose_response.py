"""Dose-response of the CPU generator: does a stronger generator turn MVC's loss into a gain? For digits and the
three folders of `scripts/make_imagefolders.py`, each generator strength runs through `mvc study` from scratch (no
selection: each profile's frozen recipe; classify.methods none and mvc, 3 seeds), and the table gives, per strength:
MVC's label fidelity beside the judge's accuracy on real test images, FID on EfficientNet-Lite0 features, copies
(of the labelled images and of the pool), the share of distinct captions per class, and MVC - none with its paired
95% interval over the classifier seeds (one generative run: the interval covers classifier seeds only).

Strengths (each a set of overrides on the profile):
- `before`: the kit's generator before MiniLM: a random 32-wide CLIP text encoder and, for the folders, drawing at
  16 px through a two-level, 4-channel VAE (300 steps), upsampled to the classifier's 32 px;
- `random_text`: the random CLIP encoder at the classifier's resolution (what the resolution alone buys);
- `minilm`: the shipped generator: pretrained MiniLM, at the classifier's resolution;
- `minilm_long` (digits only): MiniLM with twice the backbone pretraining steps.

    python benchmarks/generator_dose_response.py [--datasets digits,shapes] [--data DIR]
Writes `benchmarks/generator_dose_response.md` and `.json` (rows appended as each run ends: a stopped run resumes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["classify.methods=[none, mvc]", "classify.seeds=[0, 1, 2]", "select.run_first=false",
          "metrics.feature_extractor=efficientnet_lite0"]
FOLDER_BEFORE = ["backbone.surrogate.text_encoder=random_clip", "backbone.resolution=16",
                 "backbone.surrogate.vae_channels=[32, 64]", "backbone.surrogate.latent_channels=4",
                 "backbone.surrogate.vae_steps=300", "backbone.surrogate.vae_lr=0.002"]
STRENGTHS = {
    "digits": {"before": ["backbone.surrogate.text_encoder=random_clip"], "minilm": [],
               "minilm_long": ["backbone.surrogate.unet_steps=2200"]},
    "folder": {"before": FOLDER_BEFORE, "random_text": ["backbone.surrogate.text_encoder=random_clip"], "minilm": []},
}
FOLDERS = ("shapes", "glyphs", "textures")


def run(dataset: str, strength: str, overrides: list[str], data: Path, out: Path) -> dict:
    """One study from scratch; its MVC coarse-mix row and its MVC - none contrast."""
    profile = "params/digits.yaml" if dataset == "digits" else "params/imagefolder_cpu.yaml"
    study = f"dose-{dataset}-{strength}"
    sets = [f"study={study}", f"runs_root={out / 'runs'}", f"reports_root={out / 'reports'}", *COMMON, *overrides]
    if dataset != "digits":
        sets.append(f"data.root={data / dataset}")
    start = time.time()
    cmd = [str(ROOT / ".venv/bin/mvc"), "study", profile, *sum((["--set", s] for s in sets), [])]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tables = out / "reports" / study / "tables"
    metrics = pd.read_csv(tables / "image_metrics.csv").set_index("synthetic_set")
    tests = pd.read_csv(tables / "paired_tests.csv")
    contrast = tests[(tests["method"] == "mvc") & (tests["baseline"] == "none")].iloc[0]
    mvc, real = metrics.loc["mvc_coarse"], metrics.loc["real_train"]
    return {"dataset": dataset, "strength": strength, "minutes": round((time.time() - start) / 60, 1),
            "fidelity": round(float(mvc["label_fidelity"]), 3),
            "judge_on_real": round(float(mvc["judge_accuracy_on_real"]), 3),
            "fid_lite0": round(float(mvc["fid"]), 2), "copies": round(float(mvc["copies"]), 4),
            "copies_pool": round(float(mvc["copies_pool"]), 4),
            "distinct_captions": round(float(real.get("distinct_caption_share", float("nan"))), 3),
            "mvc_minus_none": round(float(contrast["difference"]), 2), "ci95": round(float(contrast["ci95"]), 2)}


def write(rows: list[dict]) -> None:
    (ROOT / "benchmarks/generator_dose_response.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = pd.DataFrame(rows)
    md = ["# Generator dose-response (CPU)", "", __doc__.split("\n\n")[0].replace("\n", " "), "",
          "Made by `python benchmarks/generator_dose_response.py`; the CPU is in the JSON's `cpu` field.", "",
          table.drop(columns=["cpu"], errors="ignore").to_markdown(index=False), ""]
    (ROOT / "benchmarks/generator_dose_response.md").write_text("\n".join(md))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="digits,shapes,glyphs,textures")
    p.add_argument("--data", type=Path, default=None,
                   help="where make_imagefolders.py wrote (default: a temporary folder)")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from mvc.study import cpu_model

    out = Path(tempfile.mkdtemp(prefix="mvc-dose-"))
    data = args.data or out / "data"
    if not (data / "shapes").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts/make_imagefolders.py"), str(data)], check=True)
    path = ROOT / "benchmarks/generator_dose_response.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    done = {(r["dataset"], r["strength"]) for r in rows}
    for dataset in args.datasets.split(","):
        for strength, overrides in STRENGTHS["digits" if dataset == "digits" else "folder"].items():
            if (dataset, strength) in done:
                continue
            rows.append({**run(dataset, strength, overrides, data, out), "cpu": cpu_model()})
            write(rows)
            print(rows[-1], flush=True)


if __name__ == "__main__":
    main()
