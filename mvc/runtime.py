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


def on_cpu(requested: str = "auto") -> bool:
    """True where a stage runs on the CPU: `device: cpu` asked for, or no CUDA device visible."""
    import torch

    return requested == "cpu" or not torch.cuda.is_available()


def process_state(requested: str = "auto"):
    """accelerate's `PartialState` of this process (its rank among the launched processes, its device), on the CPU
    where `on_cpu(requested)`."""
    from accelerate import PartialState  # deferred: accelerate is slow to import

    return PartialState(cpu=on_cpu(requested))


def sampling_dtype(device, cpu_precision: str = "float32"):
    """The dtype of the UNet while sampling: bf16 on a GPU; on a CPU `generate.cpu_precision` by the rule of
    `effective_mixed_precision` (bf16 only where the CPU computes it natively). The latents and the scheduler's
    arithmetic stay float32 (`run_in_dtype`)."""
    import torch

    if str(getattr(device, "type", device)) == "cuda":
        return torch.bfloat16
    requested = "no" if cpu_precision == "float32" else cpu_precision  # the rule of every other CPU precision
    bf16 = effective_mixed_precision(requested, "cpu", "generate.cpu_precision") == "bf16"
    return torch.bfloat16 if bf16 else torch.float32


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


def make_optimizer(name: str, params, device, **kwargs):
    """`finetune.optimizer` by name: `adamw` (fused, above) or `adamw8bit` (bitsandbytes' 8-bit AdamW: its two
    states in uint8 with block-wise scales, on CPUs and GPUs)."""
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise RuntimeError("finetune.optimizer: adamw8bit needs bitsandbytes (`pip install bitsandbytes`); or set "
                               "finetune.optimizer: adamw") from err
        return bnb.optim.AdamW8bit(params, **kwargs)
    return adamw(params, device, **kwargs)


def maybe_compile(module, enabled: bool, device, field: str):
    """`torch.compile` the bare module's forward on a GPU (before `accelerator.prepare`, as diffusers' examples do:
    DDP's wrapper then calls the compiled forward); on a CPU it is skipped with a logged reason (minutes of
    compilation for at most 1.3x on these models: measured in benchmarks/README.md)."""
    import torch

    if not enabled:
        return module
    if torch.device(device).type != "cuda":
        log.warning("%s: torch.compile skipped on %s (it pays off only on a GPU, over thousands of steps)", field,
                    device)
        return module
    module.forward = torch.compile(module.forward)
    return module


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX). Without it, bf16 autocast is emulated and
    slower than float32: one forward of an SD-1.5-shaped UNet at 256 px took 157 s under bf16 autocast against
    12.8 s in float32 on an AVX2-only CPU (benchmarks/README.md)."""
    import torch

    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def effective_mixed_precision(requested: str, device, field: str = "finetune.mixed_precision") -> str:
    """The mixed precision to run with on `device`: as asked on a GPU; on a CPU bf16 only where it computes bf16
    natively, and never fp16 (emulated on CPUs); a change is logged with its reason. `auto`: bf16 where it is native
    (a CPU with AVX512-BF16 or AMX, a GPU that supports it), float32 elsewhere (AVX2-only CPUs), silently."""
    import torch

    kind = torch.device(device).type
    if requested == "auto":  # bf16 wherever it is native; float32 elsewhere, without a warning
        if kind == "cpu":
            return "bf16" if cpu_has_native_bf16() else "no"
        return "bf16" if kind != "cuda" or not torch.cuda.is_available() or torch.cuda.is_bf16_supported() else "no"
    if requested == "no" or kind != "cpu":
        return requested
    if requested == "bf16" and cpu_has_native_bf16():
        return requested
    why = "this CPU has no native bf16 (AVX512-BF16 or AMX), where autocast is many times slower than float32" \
        if requested == "bf16" else "fp16 autocast is emulated on CPUs"
    log.warning("%s: %s asked for, running in float32 on the CPU: %s", field, requested, why)
    return "no"


def run_in_dtype(module):
    """Let a module whose weights are in a lower precision (a bf16 UNet) be called in float32: floating inputs are
    cast to its dtype on the way in and the output back to float32 on the way out, so that latents and the sampler's
    arithmetic (ours and diffusers' pipelines') stay in float32. A float32 module is returned unchanged."""
    import torch

    dtype = next(module.parameters()).dtype
    if dtype == torch.float32:
        return module

    def cast(x, to):
        return x.to(to) if torch.is_tensor(x) and x.is_floating_point() else x

    def inputs(_, args, kwargs):
        return tuple(cast(a, dtype) for a in args), {k: cast(v, dtype) for k, v in kwargs.items()}

    def output(_, args, kwargs, out):
        if isinstance(out, tuple):
            return tuple(cast(o, torch.float32) for o in out)
        out.sample = cast(out.sample, torch.float32)
        return out

    module.register_forward_pre_hook(inputs, with_kwargs=True)
    module.register_forward_hook(output, with_kwargs=True)
    return module


def release_memory() -> None:
    """Free what the last unit of work left: Python cycles first, then the CUDA allocator's cached blocks."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def peak_memory() -> dict[str, float]:
    """This process's peak host memory (GiB, since it started) and, on a GPU, the peak device memory since the
    last `reset_peak_memory`."""
    import resource

    import torch

    out = {"peak_host_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_device_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return out


def reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


GPU_MEMORY_ENV = "MVC_GPU_MEMORY_GIB"  # cap this process's CUDA memory, e.g. 24 to rehearse a consumer card on an H200


def cap_gpu_memory() -> float | None:
    """With MVC_GPU_MEMORY_GIB set and a GPU present, cap this process's CUDA allocations at that many GiB
    (`torch.cuda.set_per_process_memory_fraction`): a larger card then behaves, for memory, as the smaller one."""
    gib = os.environ.get(GPU_MEMORY_ENV)
    if not gib:
        return None
    import torch

    if not torch.cuda.is_available():
        log.warning("%s=%s ignored: no CUDA device", GPU_MEMORY_ENV, gib)
        return None
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    torch.cuda.set_per_process_memory_fraction(min(1.0, float(gib) / total))
    log.info("CUDA memory capped at %s GiB of %.0f (%s)", gib, total, GPU_MEMORY_ENV)
    return float(gib)
