"""The paper profiles' classifier at real size on this CPU: `params/cifar10.yaml`'s ImageNet ResNet-50 (shape-true
random weights where torchvision reads the real ones, the torch hub cache), fine-tuned at 224 px with the
profile's batch, SGD, warm-up and label smoothing, through the kit's own `train_classifier` (RandAugment's per-image
augmentation included), then as a linear probe, then scored; images/s of each and the peak memory.

    python benchmarks/classifier_rehearsal.py   # a few minutes on 2 cores; writes classifier_rehearsal.md/.json
"""

from __future__ import annotations

import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def main(steps: int = 3) -> None:
    home = Path(tempfile.mkdtemp(prefix="torch_home_"))
    os.environ["TORCH_HOME"] = str(home)
    import sys

    sys.path.insert(0, str(HERE.parent))
    from mvc.classifiers import ClassificationData, RunSpec, evaluate, train_classifier
    from mvc.config import load_config
    from mvc.study import cpu_model
    from mvc.weights import required_weights
    from tests.tiny_models import save_random_torchvision_weights

    save_random_torchvision_weights("resnet50", home)
    cfg = load_config(HERE.parent / "params" / "cifar10.yaml")
    assert [w.cached for w in required_weights(cfg) if w.field == "classify.backbone"] == [True]
    rng = np.random.default_rng(0)
    n, classes = 1000, 10
    data = ClassificationData(torch.from_numpy(rng.integers(0, 255, (n, 3, 32, 32), dtype=np.uint8)),
                              torch.arange(n) % classes,
                              torch.from_numpy(rng.integers(0, 255, (256, 3, 32, 32), dtype=np.uint8)),
                              torch.arange(256) % classes, classes)
    shipped = cfg.classify
    rows = {}
    for train in ("finetune", "linear_probe"):
        c = shipped.model_copy(update={"epochs": None, "steps": steps, "warmup_steps": 1, "train": train})
        start = time.perf_counter()
        model = train_classifier(data, RunSpec("randaugment", 0), c, 32)
        wall = time.perf_counter() - start
        rows[train] = {"steps": steps, "batch_size": c.batch_size, "wall_s": round(wall, 1),
                       "train_images_per_s": round(steps * c.batch_size / wall, 2)}
    start = time.perf_counter()
    evaluate(model, data.test_x, data.test_y, batch_size=64)
    rows["evaluate"] = {"images": len(data.test_y),
                        "images_per_s": round(len(data.test_y) / (time.perf_counter() - start), 2)}
    out = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "profile": "params/cifar10.yaml", "classifier": f"{shipped.backbone} ImageNet (random weights, cached) at "
           f"{shipped.input_size} px, {shipped.optimizer}, label smoothing {shipped.label_smoothing}",
           "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2), "runs": rows,
           "date": time.strftime("%Y-%m-%d %H:%M")}
    (HERE / "classifier_rehearsal.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# The paper profiles' classifier at real size on the CPU", "",
             f"Made by `python benchmarks/classifier_rehearsal.py` on {out['cpu']} ({out['threads']} threads), torch "
             f"{out['torch']}, {out['date']}. {out['profile']}'s classifier as shipped: {out['classifier']}, batch "
             f"{shipped.batch_size}, RandAugment per image, 1,000 CIFAR-shaped 32 px images resized on the fly. "
             f"Peak memory {out['peak_rss_gib']} GiB.", "",
             "| run | steps x batch | wall s | images/s |", "|---|---|---|---|"]
    for name in ("finetune", "linear_probe"):
        r = rows[name]
        lines.append(f"| {name} | {r['steps']} x {r['batch_size']} | {r['wall_s']} | {r['train_images_per_s']} |")
    lines.append(f"| evaluate | {rows['evaluate']['images']} images | | {rows['evaluate']['images_per_s']} |")
    lines += ["", "On a GPU the same loop is bounded by the CPU's per-image augmentation as much as by the network; "
              "`mvc.gpu_bill` estimates the network's share from FLOP counts."]
    (HERE / "classifier_rehearsal.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
