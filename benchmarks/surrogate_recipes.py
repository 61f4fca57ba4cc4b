"""The digits fine-tuning recipe, chosen on label fidelity AND novelty, on validation data (never test).

Every recipe starts from one surrogate backbone pretrained on the unlabelled pool and the printed-digit source
domain, fine-tunes with its own settings, generates the coarse MVC set, and is measured on validation data only:
label fidelity (the judge trains on val + pool), the share of copies of labelled training images, FID against
val, and the accuracy of the `mvc` classifier evaluated on val (3 seeds). Writes `benchmarks/surrogate_recipes.md`
and `.json`.

    python benchmarks/surrogate_recipes.py        (about 20 minutes on 2 CPU cores)
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COMMON = ["backbone.surrogate.source_domain=printed_digits", "metrics.reference_split=val",
          "classify.evaluate_on=val", "classify.methods=[mvc]", "classify.seeds=[0,1,2]", "classify.mvc_modes=[coarse]",
          "classify.workers=2", "generate.modes=[coarse]"]
RECIPES = {  # name -> (what it changes, overrides)
    "1200 steps": ("the digits recipe as it was", []),
    "600 steps": ("half the fine-tuning steps", ["finetune.steps=600", "finetune.checkpoint_every=300"]),
    "1200 steps, posterior samples": ("targets drawn from the VAE posterior", ["finetune.target_latents=sample"]),
    "600 steps, posterior samples, dropout 0.1": (
        "fewer steps, sampled targets, twice the conditioning dropout",
        ["finetune.steps=600", "finetune.checkpoint_every=300", "finetune.target_latents=sample",
         "finetune.drop_text=0.1", "finetune.drop_image=0.1", "finetune.drop_both=0.1"]),
}
TARGET = {"copies": 0.05, "label_fidelity": 0.85}


def run(name: str, overrides: list[str], base_run: Path | None) -> dict:
    """Fine-tune, generate, measure and classify one recipe; the stages before fine-tuning are copied from the base."""
    from mvc import backbone, captioning, classify, data, embed, finetune, generate, metrics
    from mvc.artifacts import load_image_metrics, load_results
    from mvc.config import load_config

    study = "recipe-" + "".join(c if c.isalnum() else "-" for c in name).strip("-")
    cfg = load_config(ROOT / "params/digits.yaml", [*COMMON, *overrides, f"study={study}"])
    shutil.rmtree(cfg.paths.run, ignore_errors=True)
    if base_run is not None:
        shutil.copytree(base_run, cfg.paths.run, ignore=shutil.ignore_patterns("finetune", "mvc", "synthetic", ".lock",
                                                                                "results.csv", "image_metrics.csv"))
        for stale in ("finetune", "generate", "metrics", "classify"):
            (cfg.paths.stages / f"{stale}.json").unlink(missing_ok=True)
    start = time.time()
    for fn in (data.prepare_dataset, captioning.caption_dataset, embed.embed_captions, backbone.prepare_backbone):
        fn(cfg, show_progress=False)
    tuned = time.time()
    finetune.finetune(cfg, show_progress=False)
    seconds = time.time() - tuned
    generate.generate_all(cfg, show_progress=False)
    metrics.image_metrics(cfg, show_progress=False)
    classify.classify_all(cfg, show_progress=False)
    rows = load_image_metrics(cfg).set_index("synthetic_set")
    acc = load_results(cfg)["top1"]
    out = {"recipe": name, "finetune_s": round(seconds, 1), "total_s": round(time.time() - start, 1)}
    for s in ("mvc_coarse", "sd_naive", "real_train"):
        out.update({f"{s}_{k}": round(float(rows.loc[s, k]), 4) for k in ("label_fidelity", "copies", "fid")})
    out.update({"mvc_val_top1": round(float(acc.mean()), 4), "mvc_val_top1_sd": round(float(acc.std()), 4),
                "run": str(cfg.paths.run)})
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    results, base = [], None
    for name, (_, overrides) in RECIPES.items():
        results.append(run(name, overrides, base))
        base = base or Path(results[0]["run"])
    meets = [r for r in results if r["mvc_coarse_copies"] <= TARGET["copies"]
             and r["mvc_coarse_label_fidelity"] >= TARGET["label_fidelity"]]
    pool = meets or results
    chosen = max(pool, key=lambda r: r["mvc_val_top1"])
    (ROOT / "benchmarks/surrogate_recipes.json").write_text(json.dumps({"results": results, "chosen": chosen["recipe"],
                                                                        "target": TARGET}, indent=2) + "\n")
    lines = ["# Digits fine-tuning recipes: label fidelity against copies (validation data only)", "",
             "Backbone: the surrogate pretrained on the unlabelled pool and on printed digits (the labelled source "
             "domain). Measured on the coarse MVC set (500 images) against the val split; the `mvc` classifier "
             "evaluated on val, mean of 3 seeds. Target: at most 5% copies at label fidelity at least 85%.", "",
             "| recipe | what changes | fine-tune s | label fidelity | copies | FID (val) | mvc top-1 on val "
             "| naive fidelity |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['recipe']} | {RECIPES[r['recipe']][0]} | {r['finetune_s']:.0f} | "
                     f"{r['mvc_coarse_label_fidelity']:.3f} | {r['mvc_coarse_copies']:.3f} | "
                     f"{r['mvc_coarse_fid']:.2f} | "
                     f"{100 * r['mvc_val_top1']:.2f} ± {100 * r['mvc_val_top1_sd']:.2f} | "
                     f"{r['sd_naive_label_fidelity']:.3f} |")
    lines += ["", f"Chosen: **{chosen['recipe']}** ("
              + ("meets the target; the best validation accuracy among those that do" if meets else
                 "no recipe met the target; the best validation accuracy of all") + ")."]
    (ROOT / "benchmarks/surrogate_recipes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
