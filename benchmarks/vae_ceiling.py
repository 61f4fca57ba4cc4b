"""The CPU generator's ceiling: how much of a class survives the surrogate's VAE. For digits, the concepts testbed and
the three folders of `scripts/make_imagefolders.py`, and each VAE recipe, the VAE is trained on the unlabelled pool
exactly as the backbone stage trains it (`mvc.backbone._train_vae`; no UNet), and the profile's judge (trained on
val and pool) reads the real test images as they are and through that VAE (encoded to its posterior mode, decoded,
read back at the data resolution: `mvc.judge.through_vae`). A generator that drew the real images exactly would be
read as well as the second number, so it says whether the fidelity target (0.8 x the judge on real images) is open
to a better UNet or closed by the VAE.

    python benchmarks/vae_ceiling.py [--datasets shapes,glyphs,textures] [--data DIR]
Writes `benchmarks/vae_ceiling.md` and `.json` (a row appended as each recipe ends: a stopped run resumes).
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
import torch

ROOT = Path(__file__).resolve().parents[1]
# VAE recipes as overrides of backbone.surrogate; "profile" is the params file's own
RECIPES = {
    "digits": {"profile": {}, "steps_x2.5": {"vae_steps": 1000}},
    "concepts": {"profile": {}, "latents_4ch_300": {"latent_channels": 4, "vae_steps": 300, "vae_lr": 0.002},
                 "steps_2000": {"vae_steps": 2000}, "latents_16ch": {"latent_channels": 16}},
    "folder": {"profile": {}, "latents_16x16": {"vae_channels": [32, 64], "latent_channels": 8},
               "steps_x2.5": {"vae_steps": 1500}, "steps_2000": {"vae_steps": 2000},
               "steps_1200_lr2e-3": {"vae_steps": 1200, "vae_lr": 0.002},
               "steps_2000_bf16": {"vae_steps": 2000},  # steps_2000 again, measured with bf16 autocast
               "steps_2000_fp32": {"vae_steps": 2000, "mixed_precision": "no"}},
}


def measure(dataset: str, recipe: str, update: dict, data: Path, out: Path) -> dict:
    from mvc.artifacts import diffusion_images, stored_splits
    from mvc.backbone import _train_vae
    from mvc.classifiers import evaluate
    from mvc.config import load_config
    from mvc.judge import judge_accuracy, through_vae, train_judge
    from mvc.pipeline import stage_functions

    own = {"digits": "params/digits.yaml", "concepts": "params/concepts.yaml"}
    profile = ROOT / own.get(dataset, "params/imagefolder_cpu.yaml")
    sets = [f"study=ceiling-{dataset}", f"runs_root={out / 'runs'}", f"reports_root={out / 'reports'}", "device=cpu"]
    if dataset not in own:
        sets.append(f"data.root={data / dataset}")
    cfg = load_config(profile, sets)
    if not cfg.paths.splits.exists():
        stage_functions()["data"](cfg, show_progress=False)
    splits = stored_splits(cfg)
    x = diffusion_images(cfg, splits.loc[splits["split"] == "pool", "image_id"].to_numpy())
    s = cfg.backbone.surrogate.model_copy(update=update)
    torch.manual_seed(s.seed)
    start = time.time()
    vae, _ = _train_vae(s, cfg.backbone.resolution, x, torch.Generator().manual_seed(s.seed), [], False)
    seconds = time.time() - start
    judge, judged = train_judge(cfg)
    back = through_vae(cfg, judged.test_x, vae=vae)
    mse = float(((back.float() - judged.test_x.float()) / 127.5).pow(2).mean())
    real = judge_accuracy(cfg, judge, judged)
    ceiling = evaluate(judge, back, judged.test_y)[0]
    return {"dataset": dataset, "recipe": recipe, "vae": json.dumps(update) if update else "profile",
            "vae_channels": str(s.vae_channels), "latent_channels": s.latent_channels, "vae_steps": s.vae_steps,
            "pool_images": len(x), "vae_seconds": round(seconds, 1), "test_mse": round(mse, 4),
            "judge_on_real": round(real, 3), "judge_through_vae": round(ceiling, 3),
            "ceiling_over_target": round(ceiling / (0.8 * real), 2)}


def write(rows: list[dict]) -> None:
    (ROOT / "benchmarks/vae_ceiling.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = pd.DataFrame(rows).drop(columns=["cpu"], errors="ignore")
    cpus = sorted({r.get("cpu", "?") for r in rows})
    md = ["# The CPU generator's ceiling: what the surrogate's VAE keeps of a class", "",
          __doc__.split("\n\n")[0].replace("\n", " "), "",
          f"Made by `python benchmarks/vae_ceiling.py` on {', '.join(cpus)}, 2 cores. `ceiling_over_target`: "
          "judge_through_vae / (0.8 x judge_on_real); below 1, even exact copies of real images through that VAE miss "
          "the target. "
          "`test_mse`: mean squared error of the reconstruction in [-1, 1] pixels.", "",
          table.to_markdown(index=False), ""]
    target = ROOT / "benchmarks/vae_ceiling.md"
    old = target.read_text() if target.exists() else ""
    reading = old[old.index("## Reading"):] if "## Reading" in old else ""  # written by hand: kept
    target.write_text("\n".join(md) + ("\n" + reading if reading else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="shapes,glyphs,textures,digits")
    p.add_argument("--recipes", default=None, help="comma-separated recipe names (default: all of the dataset's)")
    p.add_argument("--data", type=Path, default=None, help="where make_imagefolders.py wrote (default: a temp folder)")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(2)
    from mvc.study import cpu_model

    out = Path(tempfile.mkdtemp(prefix="mvc-ceiling-"))
    data = args.data or out / "data"
    if not (data / "shapes").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts/make_imagefolders.py"), str(data)], check=True)
    path = ROOT / "benchmarks/vae_ceiling.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    done = {(r["dataset"], r["recipe"]) for r in rows}
    for dataset in args.datasets.split(","):
        for recipe, update in RECIPES.get(dataset, RECIPES["folder"]).items():
            if (dataset, recipe) in done or (args.recipes and recipe not in args.recipes.split(",")):
                continue
            rows.append({**measure(dataset, recipe, update, data, out), "cpu": cpu_model()})
            write(rows)
            print(rows[-1], flush=True)


if __name__ == "__main__":
    main()
