"""The classifier's host-side work per training image, measured on one CPU thread: what bounds a GPU's classifier
loop, whose per-image augmentation and synthetic replacement run in Python on the CPU beside the network.

For every method of `params/cifar10.yaml` (as shipped), at each paper dataset's resolution, through the kit's own
`method_transform` (the method's transforms, then crop and flip) and `SyntheticSampler` (one synthetic set of M = 10
per source, `classify.p_synthetic`): milliseconds per image, averaged over batches of the profile's size. The
GPU bill (`mvc.gpu_bill`) takes the slowest method's figure at the profile's resolution, times the batch, as the
floor of a classifier step; a GPU host core is taken to be as fast as this one (a stated factor of 1).

    python benchmarks/classifier_host_cost.py   # about a minute on one core; writes classifier_host_cost.md/.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
RESOLUTIONS = (32, 64, 128)  # CIFAR; Tiny ImageNet; Caltech-101 and the MRI set


def main(batches: int = 4) -> None:
    sys.path.insert(0, str(HERE.parent))
    from mvc.classifiers import ClassificationData, SyntheticSampler, method_transform
    from mvc.config import load_config
    from mvc.registry import METHODS
    from mvc.study import cpu_model

    torch.set_num_threads(1)
    cfg = load_config(HERE.parent / "params" / "cifar10.yaml")
    c, rng = cfg.classify, np.random.default_rng(0)
    table: dict[str, dict[str, float]] = {}
    for side in RESOLUTIONS:
        n, m = 1000, 10
        real = torch.from_numpy(rng.integers(0, 255, (n, 3, side, side), dtype=np.uint8))
        synthetic = torch.from_numpy(rng.integers(0, 255, (n * m, 3, side, side), dtype=np.uint8))
        data = ClassificationData(real, torch.arange(n) % 10, real[:10], torch.arange(10), 10,
                                  {"set": (synthetic, np.repeat(np.arange(n), m), np.tile(np.arange(m), n))})
        sampler = SyntheticSampler(data, ["set"], None, c.combine)
        for method in c.methods:
            per_image = method_transform(method, c, side)
            draws = METHODS[method].draws_images(c)
            start = time.perf_counter()
            for _ in range(batches):
                rows = rng.integers(0, n, c.batch_size)
                x = real[rows]
                if draws:
                    x, _ = sampler(rows, c.p_synthetic, rng, x)
                torch.stack([per_image(img) for img in x])
            ms = (time.perf_counter() - start) * 1000 / (batches * c.batch_size)
            table.setdefault(method, {})[str(side)] = round(ms, 3)
    out = {"cpu": cpu_model(), "threads": 1, "torch": torch.__version__, "profile": "params/cifar10.yaml",
           "batch_size": c.batch_size, "ms_per_image": table,
           "slowest_ms_per_image": {str(s): max(t[str(s)] for t in table.values()) for s in RESOLUTIONS},
           "date": time.strftime("%Y-%m-%d %H:%M")}
    (HERE / "classifier_host_cost.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# The classifier's host-side work per image (one CPU thread)", "",
             f"Made by `python benchmarks/classifier_host_cost.py` on {out['cpu']}, one thread, torch {out['torch']}, "
             f"{out['date']}: each method of {out['profile']} as shipped, its per-image transforms (then crop and "
             f"flip) and, for the synthetic methods, the replacement of real images (M = 10, p = {c.p_synthetic}), "
             f"over {batches} batches of {c.batch_size}. Milliseconds per image:", "",
             "| method | " + " | ".join(f"{s} px" for s in RESOLUTIONS) + " |", "|---|" + "---|" * len(RESOLUTIONS)]
    lines += [f"| {k} | " + " | ".join(f"{v[str(s)]:.3f}" for s in RESOLUTIONS) + " |" for k, v in table.items()]
    lines += ["", "`mvc.gpu_bill` floors a classifier step at the slowest method's figure at the profile's resolution "
              f"times the batch ({', '.join(f'{s} px: {v:.3f} ms' for s, v in out['slowest_ms_per_image'].items())} "
              f"per image), taking a GPU host core to be as fast as this one."]
    (HERE / "classifier_host_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
