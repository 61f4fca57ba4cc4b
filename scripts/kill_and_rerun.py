"""Kill each long stage at random points (SIGKILL, as the operating system or a lost machine would), run it again,
and check that what it leaves equals an uninterrupted run: the same files, the same rows, no duplicates, no
truncated images, the same numbers.

    python scripts/kill_and_rerun.py [--kills 4] [--seed 0] [--stages caption,finetune,generate,classify] [--units]

Runs on the smoke profile, sized up so that each stage lasts a few seconds; captioning uses the BLIP-2 path on a
tiny random BLIP-2 saved to disk. With `--units` the study is a design of four units (shots [2, 4] x 2 replicates
that redraw the labelled images) and each kill falls inside a unit after the main one: a moment after the first,
second, ... unit (or a share of the classifier runs) has finished, in the other units' fine-tuning, generation and
classification; every unit's outputs are compared. Prints one line
per stage and exits non-zero if any check failed.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mvc.stages import STAGES  # noqa: E402 - after the path above

ORDER = [s.name for s in STAGES if s.name != "report"]  # every stage, the fine-tuning stages of each model included
SIZES = ["finetune.steps=24", "finetune.checkpoint_every=4", "generate.images_per_source=4", "generate.batch_size=4",
         "classify.seeds=[0,1,2]", "classify.steps=30", "caption.batch_size=8", "device=cpu"]


UNITS = ["data.shots=[2, 4]", "data.labelled_per_class=5", "replicates=2", "redraw_labelled=true",
         "classify.seeds=[0, 1, 2, 3]"]


def overrides(work: Path, blip2: Path, units: bool = False) -> list[str]:
    sizes = [s for s in SIZES if not (units and s.startswith("classify.seeds"))]
    return [f"runs_root={work / 'runs'}", f"reports_root={work / 'reports'}", "caption.backend=blip2",
            f"caption.model={blip2}", "caption.max_new_tokens=4", *sizes, *(UNITS if units else [])]


def unit_folders(run: Path, stage: str) -> dict[str, Path]:
    """Each unit's folder of a per-unit stage: the main unit's are the study's own."""
    if stage == "finetune":
        found = {"main": (run / "finetune", run / "mvc")}
        found |= {u.name: (u / "work", u / "model") for u in sorted((run / "units" / "finetune").glob("*"))}
        return found
    found = {"main": run / "synthetic"}
    return found | {u.name: u for u in sorted((run / "units" / "generate").glob("*"))}


def run_stage(stage: str, over: list[str], kill_after: float | None = None,
              kill_when: Callable[[], bool] | None = None) -> bool:
    """Run `mvc <stage>`; with `kill_after`, SIGKILL it after that many seconds; with `kill_when`, as soon as that
    holds (polled every 0.05 s), then `kill_after` seconds later. True if it finished."""
    cmd = [sys.executable, "-m", "mvc", stage, str(ROOT / "params/smoke.yaml"), *[f"--set={o}" for o in over]]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if kill_after is None and kill_when is None:
        if proc.wait():
            proc = subprocess.run(cmd, capture_output=True, text=True)  # again, for its error
            raise RuntimeError(f"mvc {stage} failed:\n{proc.stderr[-3000:]}")
        return True
    while kill_when is not None and proc.poll() is None and not kill_when():
        time.sleep(0.05)
    try:
        proc.wait(timeout=kill_after or 0)
        return proc.returncode == 0
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return False


def snapshot(run: Path, stage: str) -> dict:
    """What a stage leaves, as comparable values."""
    if stage == "caption":
        return {"captions": pd.read_csv(run / "captions.csv", keep_default_na=False).sort_values("image_id")}
    if stage == "finetune":
        from safetensors.torch import load_file

        return {unit: {"loss": pd.read_csv(work / "loss.csv"),
                       "unet": load_file(str(model / "unet" / "diffusion_pytorch_model.safetensors"))}
                for unit, (work, model) in unit_folders(run, stage).items()}
    if stage == "generate":
        out = {}
        for unit, folder in unit_folders(run, stage).items():
            for manifest in sorted(folder.glob("*/manifest.csv")):
                frame = pd.read_csv(manifest)
                images = {}
                for p in frame["path"]:
                    with Image.open(manifest.parent / p) as im:
                        im.load()  # a truncated PNG fails here
                        images[p] = np.asarray(im).astype(int)
                files = sorted(f.name for f in manifest.parent.rglob("*") if f.is_file())
                out[f"{unit}/{manifest.parent.name}"] = (frame, images, files)
        return out
    if stage == "classify":
        return {"results": pd.read_csv(run / "results.csv")}
    raise ValueError(stage)


def units_finished(run: Path, stage: str) -> int:
    """How far a per-unit stage is: units finished (a model saved, a set's manifest written), or classifier runs."""
    if stage == "finetune":
        return sum((model / "model_index.json").exists() for _, model in unit_folders(run, stage).values())
    if stage == "generate":
        return sum(bool(list(f.glob("*/manifest.csv"))) for f in unit_folders(run, stage).values())
    if stage == "classify":
        parts = [f for f in run.glob(".results-part-*.csv") if f.stat().st_size]
        return sum(max(0, len(f.read_text().splitlines()) - 1) for f in parts) if parts else \
            (len(pd.read_csv(run / "results.csv")) if (run / "results.csv").exists() else 0)
    return 0


def what(stage: str) -> str:
    return "classifier runs" if stage == "classify" else "units"


def compare(stage: str, a: dict, b: dict) -> list[str]:
    """The differences between an uninterrupted and an interrupted-and-resumed run."""
    bad = []
    if stage == "caption":
        x, y = a["captions"].reset_index(drop=True), b["captions"].reset_index(drop=True)
        if not y["image_id"].is_unique:
            bad.append("duplicate captions")
        if not x.equals(y):
            bad.append(f"captions differ ({len(x)} vs {len(y)} rows)")
    elif stage == "finetune":
        if set(a) != set(b):
            bad.append(f"units differ: {sorted(a)} vs {sorted(b)}")
        for unit in set(a) & set(b):
            x, y = a[unit], b[unit]
            if y["loss"]["step"].tolist() != list(range(len(x["loss"]))):
                bad.append(f"{unit}: loss steps not contiguous")
            elif not np.allclose(x["loss"]["loss"], y["loss"]["loss"], rtol=1e-4, atol=1e-6):
                bad.append(f"{unit}: losses differ")
            worst = max(float((x["unet"][k] - y["unet"][k]).abs().max()) for k in x["unet"])
            if worst > 1e-4:
                bad.append(f"{unit}: final weights differ by {worst:.2e}")
    elif stage == "generate":
        for name, (frame, images, files) in a.items():
            other = b.get(name)
            if other is None:
                bad.append(f"{name} missing")
                continue
            f2, im2, files2 = other
            if not f2["image_id"].is_unique or sorted(f2["image_id"]) != sorted(frame["image_id"]):
                bad.append(f"{name}: manifest differs")
            if files2 != files:
                bad.append(f"{name}: files differ ({len(files)} vs {len(files2)})")
            if any(np.abs(images[p] - im2[p]).max() > 1 for p in images if p in im2):
                bad.append(f"{name}: images differ")
    elif stage == "classify":
        x, y = a["results"], b["results"]
        key = ["shots", "variant", "method", "seed"]
        if y.duplicated(key).any():
            bad.append("duplicate result rows")
        merged = x.merge(y, on=key, suffixes=("", "_b"))
        if len(merged) != len(x) or len(y) != len(x) or not np.allclose(merged["top1"], merged["top1_b"]):
            bad.append("results differ")
    return bad


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=4, help="kill points per stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stages", default="caption,finetune,generate,classify")
    p.add_argument("--units", action="store_true", help="a design of four units; kills after the main unit")
    args = p.parse_args()
    from tests.tiny_models import save_tiny_blip2

    rng = random.Random(args.seed)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        blip2 = save_tiny_blip2(tmp / "blip2")
        ref = tmp / "reference"
        times = {}
        startup = {}
        for stage in ORDER:  # the uninterrupted reference, timing each stage
            start = time.time()
            run_stage(stage, overrides(ref, blip2, args.units))
            times[stage] = time.time() - start
            start = time.time()
            run_stage(stage, overrides(ref, blip2, args.units))  # up to date: what starting up and skipping costs
            startup[stage] = time.time() - start
        for stage in args.stages.split(","):
            work = tmp / f"killed-{stage}"
            before = ORDER[: ORDER.index(stage)]
            for s in before:  # the stages before it, uninterrupted
                run_stage(s, overrides(work, blip2, args.units))
            run = work / "runs" / "smoke"
            if args.units and stage != "caption":  # kill inside a unit after the main one: once k units (runs) are done
                total = units_finished(ref / "runs" / "smoke", stage)
                targets = sorted({max(1, min(total - 1, round(total * (i + 1) / (args.kills + 1))))
                                  for i in range(args.kills)})
                points = [rng.uniform(0.1, 1.0) for _ in targets]  # seconds after the target is reached
                kills = [dict(kill_after=t, kill_when=lambda k=k, run=run, stage=stage: units_finished(run, stage) >= k)
                         for k, t in zip(targets, points)]
            else:
                targets, points = [], sorted(rng.uniform(startup[stage], max(startup[stage] + 0.5, times[stage]))
                                             for _ in range(args.kills))
                kills = [dict(kill_after=t) for t in points]
            killed, units_then = 0, []
            for kill in kills:
                if not run_stage(stage, overrides(work, blip2, args.units), **kill):
                    killed += 1
                units_then.append(units_finished(run, stage))
            run_stage(stage, overrides(work, blip2, args.units))
            bad = compare(stage, snapshot(ref / "runs" / "smoke", stage), snapshot(work / "runs" / "smoke", stage))
            failures += bool(bad)
            each = ", ".join(f"{t:.1f} s after {k} {what(stage)} had finished" for k, t in zip(targets, points))
            when = (f"killed {each}"
                    if targets else f"killed at {', '.join(f'{t:.1f}' for t in points)} s")
            print(f"{stage}: uninterrupted {times[stage]:.1f} s (start-up {startup[stage]:.1f} s); {when} "
                  f"({killed} of {len(kills)} runs were still going when killed"
                  + (f"; {what(stage)} finished at each kill: {units_then}" if args.units else "")
                  + "); after the rerun: "
                  + ("identical to the uninterrupted run" if not bad else "; ".join(bad)), flush=True)
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
