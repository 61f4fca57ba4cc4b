"""Expected wall time of each paper profile as shipped on one H100/H200-class GPU, per stage and in all.

Fine-tuning and generation come from throughput MEASURED on an H200 with SD-1.5-shaped models
(`gpu_sd15_h200.json`: MVC fine-tuning at batch 4 with gradient checkpointing and bf16, 21.4 samples/s; the kit's
sampler in bf16 with compile, 5.56 images/s at 512 px and 30 steps). Captioning, image metrics and the classifier
grid were never run on a GPU here: they are ESTIMATES from FLOP counts at an assumed 20% of the bf16 peak, with a
floor of 4 ms per classifier step (small models are latency-bound); they leave out the per-image augmentation on the
CPU and the synthetic sampler, which may bound a GPU's classifier throughput. Every replicate fine-tunes and
generates; the classifier runs `classify.epochs` (or `steps`) for every method and seed. Each row says which.

    python benchmarks/gpu_hours.py   # writes benchmarks/gpu_hours.md (seconds, no GPU needed)
"""

from __future__ import annotations

import json
from pathlib import Path

from mvc.config import load_config
from mvc.gpu_bill import DATASET_SIZES, gpu_bill, labelled_images

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PROFILES = list(DATASET_SIZES) + [f"{name}_full" for name in DATASET_SIZES]


def main() -> None:
    measured = json.loads((HERE / "gpu_sd15_h200.json").read_text())  # the rates mvc/gpu_bill.py holds
    lines = ["# Expected GPU time per paper profile (one H100/H200-class GPU)", "",
             "Made by `python benchmarks/gpu_hours.py`. `measured rate`: throughput measured on an H200 with "
             "SD-1.5-shaped models (`gpu_sd15_h200.json`, torch " + measured["torch"] + "), scaled to the "
             "profile's work; `estimate`: FLOP counts at an assumed 20% of the 989 TFLOP/s bf16 peak (classifier "
             "steps at least 4 ms, and at least their batch's host-side work measured on one CPU thread: "
             "`classifier_host_cost.json`). No paper profile has run end to end on a GPU yet.", ""]
    summary = ["| profile | labelled images | caption | finetune | generate | metrics | classify | total |",
               "|---|---|---|---|---|---|---|---|"]
    for profile in PROFILES:
        cfg = load_config(REPO / "params" / f"{profile}.yaml")
        r = gpu_bill(cfg)
        total = sum(x["s"] for x in r)
        summary.append(f"| `{profile}` | {labelled_images(cfg, *DATASET_SIZES[cfg.data.dataset]):,} | "
                       + " | ".join(f"{x['s'] / 3600:.2f} h" + ("*" if x["how"] == "estimate" else "") for x in r)
                       + f" | **{total / 3600:.1f} h** |")
        lines += [f"## {profile}", "", "| stage | how | hours |", "|---|---|---|"]
        lines += [f"| {x['stage']} | {x['how']} | {x['s'] / 3600:.2f} |" for x in r]
        lines += [f"| all | | {total / 3600:.2f} |", ""]
    lines[6:6] = summary + ["", "`*`: estimate from FLOP counts, not measured.", ""]
    (HERE / "gpu_hours.md").write_text("\n".join(lines))
    print("\n".join(summary))


if __name__ == "__main__":
    main()
