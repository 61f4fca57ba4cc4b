"""Device choice, seeding and thread settings shared by the stages."""

from __future__ import annotations

import logging
import os
import random

import numpy as np

log = logging.getLogger(__name__)


def pick_device(requested: str = "auto") -> str:
    """'cuda' when asked for or available (auto), else 'cpu'; asking for CUDA without one is an error."""
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: 'cuda' was asked for but no CUDA device is visible; set device: auto or cpu")
    if requested == "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads() -> None:
    """Use every core the process may use (2 on the study machine) for intra-op parallelism."""
    import torch

    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, n))


def adamw(params, device, **kwargs):
    """AdamW with its fused kernel (one kernel for the whole update) on CPUs and CUDA GPUs: the same update up to
    float order, 10-15% faster per fine-tuning step and ~10% per classifier step on 2 CPU cores
    (benchmarks/digits_budget.md); elsewhere PyTorch's default."""
    import torch

    fused = torch.device(device).type in ("cpu", "cuda")
    return torch.optim.AdamW(params, fused=fused, **kwargs)


def maybe_compile(module, enabled: bool, device, field: str):
    """`torch.compile` the module's forward on a GPU; on a CPU it is skipped with a logged reason (minutes of
    compilation for at most 1.3x on these models: measured in benchmarks/README.md)."""
    import torch

    if not enabled:
        return module
    if torch.device(device).type != "cuda":
        log.warning("%s: torch.compile skipped on %s (it pays off only on a GPU, over thousands of steps)", field, device)
        return module
    module.forward = torch.compile(module.forward)
    return module
