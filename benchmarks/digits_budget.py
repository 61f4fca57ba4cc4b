"""The digits study against its CPU budgets, from one run of `mvc study params/digits.yaml`.

Reads `reports/digits/provenance.json` (wall time and peak memory per notebook, seconds per stage) and the
study's outputs, adds an independent check of label fidelity (an RBF SVM trained on every real digit outside
the test split, as the first CPU probe used, applied to the generated images), and writes
`benchmarks/digits_budget.md` and `.json`.

    python benchmarks/digits_budget.py [--run]   (--run: run the study first, from scratch)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = {  # seconds, from the issues
    "backbone+finetune": 360, "generate": 180, "classify main grid (every method, 5 seeds)": 300, "study": 900,
}


def _main_share(cfg) -> float:
    from mvc.classify import grid

    specs = grid(cfg)
    return sum(s.variant == "main" for s in specs) / len(specs)


def svm_fidelity(cfg) -> dict[str, float]:
    from sklearn.svm import SVC

    from mvc.artifacts import load_images, load_splits, load_synthetic, synthetic_set_names

    splits, images = load_splits(cfg), load_images(cfg)
    real = splits[splits["split"] != "test"]
    test = splits[splits["split"] == "test"]

    def feats(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32).mean(-1).reshape(len(x), -1) / 255

    svm = SVC(gamma="scale").fit(feats(images[real["image_id"].to_numpy()]), real["label"])
    out = {"real_test": float((svm.predict(feats(images[test["image_id"].to_numpy()])) == test["label"]).mean())}
    for name in synthetic_set_names(cfg.generate):
        x, manifest = load_synthetic(cfg, name)
        out[name] = float((svm.predict(feats(x)) == manifest["label"].to_numpy()).mean())
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--run", action="store_true")
    args = p.parse_args()
    from mvc import state
    from mvc.config import load_config
    from mvc.stages import STAGES

    cfg = load_config(ROOT / "params/digits.yaml")
    if args.run:
        shutil.rmtree(cfg.paths.run, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "mvc", "study", str(ROOT / "params/digits.yaml"), "--force"], check=True)
    prov = json.loads(cfg.paths.provenance.read_text())
    sec = {s: state.stage_info(cfg, s).get("seconds", float("nan")) for s in [t.name for t in STAGES]}
    nb = prov["stages"]
    measured = {
        "backbone+finetune": sec["backbone"] + sec["finetune"],
        "generate": sec["generate"],
        # the stage also runs the ablation grid; the main grid's share is estimated by its share of the runs
        "classify main grid (every method, 5 seeds)": sec["classify"] * _main_share(cfg),
        "study": sum(v["wall_s"] for v in nb.values()),
    }
    import pandas as pd

    metrics = pd.read_csv(cfg.paths.image_metrics)
    result = {
        "device": prov["device"], "budgets_s": BUDGETS, "measured_s": measured, "stage_s": sec,
        "notebooks": {k: {"wall_s": v["wall_s"], "peak_rss_mb": v["peak_rss_mb"]} for k, v in nb.items()},
        "peak_rss_mb": max(v["peak_rss_mb"] for v in nb.values()),
        "label_fidelity_judge_cnn": dict(zip(metrics["synthetic_set"], metrics["label_fidelity"].round(4))),
        "label_fidelity_svm": svm_fidelity(cfg),
    }
    (ROOT / "benchmarks/digits_budget.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Digits study on the CPU: budgets and quality", "", f"Device: {prov['device']}", "",
             "| what | measured (s) | budget (s) | within |", "|---|---|---|---|"]
    for k, budget in BUDGETS.items():
        lines.append(f"| {k} | {measured[k]:.0f} | {budget} | {'yes' if measured[k] <= budget else 'NO'} |")
    lines += ["", f"The classify stage ran {len(__import__('mvc.classify', fromlist=['grid']).grid(cfg))} runs in "
              f"{sec['classify']:.0f} s, the ablation grid included; the main grid's time is estimated by its share of runs.",
              "", f"Peak memory (notebook process and its kernel): {result['peak_rss_mb']} MB (budget 4096 MB)", "",
              "| notebook | wall (s) | peak RSS (MB) |", "|---|---|---|"]
    lines += [f"| {k} | {v['wall_s']} | {v['peak_rss_mb']} |" for k, v in sorted(nb.items())]
    lines += ["", "Label fidelity (share of generated images a classifier trained on real digits labels as intended):", "",
              "| synthetic set | judge CNN (metrics stage) | RBF SVM (probe's check) |", "|---|---|---|"]
    for g, v in result["label_fidelity_svm"].items():
        lines.append(f"| {g} | {result['label_fidelity_judge_cnn'].get(g, float('nan'))} | {v:.4f} |")
    (ROOT / "benchmarks/digits_budget.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
