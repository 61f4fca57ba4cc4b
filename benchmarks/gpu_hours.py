"""Expected wall time of each paper profile as shipped on one H100/H200-class GPU, per stage and in all.

Fine-tuning and generation come from throughput MEASURED on an H200 with SD-1.5-shaped models
(`gpu_sd15_h200.json`: MVC fine-tuning at batch 4 with gradient checkpointing and bf16, 21.4 samples/s; the kit's
sampler in bf16 with compile, 5.56 images/s at 512 px and 30 steps). Captioning, image metrics and the classifier
grid were never run on a GPU here: they are ESTIMATES from FLOP counts at an assumed 20% of the bf16 peak, with a
floor of 4 ms per classifier step (small models are latency-bound). Each row says which.

    python benchmarks/gpu_hours.py   # writes benchmarks/gpu_hours.md (seconds, no GPU needed)
"""

from __future__ import annotations

import json
from pathlib import Path

from mvc.config import load_config

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PROFILES = {"cifar10": 10, "cifar100": 100, "tiny_imagenet": 200, "caltech101": 101, "brain_tumor_mri": 4}
PEAK = 989e12  # H100/H200 SXM dense bf16, FLOP/s
MFU = 0.20  # assumed for the estimated rows
BLIP2_FLOP = 2 * 1.0e9 * 257 + 2 * 2.7e9 * 62  # ViT-g over 257 tokens + OPT-2.7b over 32 queries + 30 new tokens
RESNET18_FLOP_224 = 1.82e9  # one forward at 224 px
INCEPTION_FLOP = 5.7e9  # one FID Inception forward at 299 px


def rows(profile: str, classes: int, measured: dict) -> list[dict]:
    cfg = load_config(REPO / "params" / f"{profile}.yaml")
    n = classes * cfg.data.max_shots  # labelled training images
    ft, g, c = cfg.finetune, cfg.generate, cfg.classify
    train_rate = measured["train"]["memory_gc_bf16"]["4"]["samples_per_s"]  # batch 4, checkpointing, bf16
    gen_rate = measured["generate"]["mvc_bf16_compiled"]["images_per_s"]  # three passes per step
    scale = (cfg.backbone.resolution / 512) ** 2  # cost per image scales with the latent's pixels
    mvc_images = n * g.images_per_source * len(g.modes)
    naive_images = n * g.images_per_source if g.naive else 0
    out = [
        {"stage": "caption (BLIP-2, fp16)", "how": "estimate", "s": n * BLIP2_FLOP / (MFU * PEAK)},
        {"stage": f"finetune ({ft.steps} steps x {ft.batch_size * ft.gradient_accumulation_steps} samples)",
         "how": "measured rate", "s": ft.steps * ft.batch_size * ft.gradient_accumulation_steps / train_rate * scale},
        {"stage": f"generate ({mvc_images} MVC + {naive_images} naive images)", "how": "measured rate",
         "s": (mvc_images + naive_images * 2 / 3) / gen_rate * scale},
        {"stage": "metrics (Inception features)", "how": "estimate",
         "s": (mvc_images + naive_images + 2 * n) * INCEPTION_FLOP / (MFU * PEAK)},
    ]
    step_flop = 3 * RESNET18_FLOP_224 * (cfg.data.resolution / 224) ** 2 * c.batch_size
    per_step = max(0.004, step_flop / (MFU * PEAK))
    runs = len(c.methods) * len(c.seeds)
    out.append({"stage": f"classify ({runs} runs x {c.steps} steps, {c.backbone})", "how": "estimate",
                "s": runs * c.steps * per_step})
    return out


def main() -> None:
    measured = json.loads((HERE / "gpu_sd15_h200.json").read_text())
    lines = ["# Expected GPU time per paper profile (one H100/H200-class GPU)", "",
             "Made by `python benchmarks/gpu_hours.py`. `measured rate`: throughput measured on an H200 with "
             "SD-1.5-shaped models (`gpu_sd15_h200.json`, torch " + measured["torch"] + "), scaled to the "
             "profile's work; `estimate`: FLOP counts at an assumed 20% of the 989 TFLOP/s bf16 peak (classifier "
             "steps at least 4 ms). No paper profile has run end to end on a GPU yet.", ""]
    summary = ["| profile | labelled images | caption | finetune | generate | metrics | classify | total |",
               "|---|---|---|---|---|---|---|---|"]
    for profile, classes in PROFILES.items():
        r = rows(profile, classes, measured)
        cfg = load_config(REPO / "params" / f"{profile}.yaml")
        total = sum(x["s"] for x in r)
        summary.append(f"| `{profile}` | {classes * cfg.data.max_shots:,} | "
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
