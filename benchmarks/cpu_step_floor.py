"""Is the digits study's training at its floor on this CPU? Per-step seconds of the three training loops the study
spends most of its time in, each in the variants that could make it faster, measured in one run on one machine:

- the surrogate UNet's pretraining step (batch 64, as `params/digits.yaml`): float32 and bf16 autocast on the two
  threads of one process; channels-last; one thread; two one-thread processes at batch 32 side by side (the compute
  of data parallelism over two processes, before its all-reduce: an upper bound on what DDP could gain); with
  `--compile`, torch.compile (inductor) of the UNet;
- the surrogate VAE's step (batch 32): float32 and bf16;
- the small CNN's classifier step (batch 64, one thread, as each `classify.workers` process runs it): float32 and
  bf16, contiguous and channels-last.

    python benchmarks/cpu_step_floor.py            # about 3 minutes on 2 cores; --compile adds about 2
    python benchmarks/cpu_step_floor.py --out benchmarks/cpu_step_floor.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


def _seconds_per_step(step, warmup: int = 4, steps: int = 20) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def unet_step(batch: int, bf16: bool, channels_last: bool = False, compile_unet: bool = False):
    """A step of `mvc.backbone._train_unet` on random latents and text of the digits profile's shapes."""
    from mvc.components import diffusion_loss, set_attention_kernel
    from mvc.config import load_config
    from mvc.runtime import adamw
    from mvc.surrogate import build_surrogate_unet, noise_scheduler

    s = load_config(REPO / "params/digits.yaml").backbone.surrogate
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    unet = build_surrogate_unet(s, 8, 384)
    set_attention_kernel(unet, s.attention)
    latents, text = torch.randn(batch, s.latent_channels, 8, 8), torch.randn(batch, 32, 384)
    if channels_last:
        unet, latents = unet.to(memory_format=torch.channels_last), latents.to(memory_format=torch.channels_last)
    model = torch.compile(unet) if compile_unet else unet
    scheduler, opt = noise_scheduler(s), adamw(unet.parameters(), "cpu", lr=1e-3)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion_loss(model, scheduler, latents, text, None, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
    return step


def vae_step(bf16: bool):
    """A step of `mvc.backbone._train_vae` on random 16 px images."""
    from mvc.config import load_config
    from mvc.runtime import adamw
    from mvc.surrogate import build_surrogate_vae

    s = load_config(REPO / "params/digits.yaml").backbone.surrogate
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    vae, x = build_surrogate_vae(s, 16), torch.rand(s.vae_batch_size, 3, 16, 16) * 2 - 1
    opt = adamw(vae.parameters(), "cpu", lr=s.vae_lr)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            post = vae.encode(x).latent_dist
            recon = vae.decode(post.sample(generator=gen)).sample
        loss = F.mse_loss(recon.float(), x) + s.vae_kl_weight * post.kl().float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def cnn_step(bf16: bool, channels_last: bool):
    """A step of `mvc.classifiers.train_classifier` for small_cnn (width 32) on a random batch of 64."""
    from mvc.classifiers import SmallCNN
    from mvc.runtime import adamw

    torch.manual_seed(0)
    model, x, y = SmallCNN(10, 3, 32), torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,))
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    opt = adamw(model.parameters(), "cpu", lr=1e-3)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _side_by_side(batch: int, bf16: bool) -> list[float]:
    """Two one-thread processes each timing a UNet step at `batch`, started together."""
    cmd = [sys.executable, __file__, "--worker", str(batch), str(int(bf16))]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO) for _ in range(2)]
    return [float(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the UNet (slow to compile)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here as well as printing it")
    ap.add_argument("--worker", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:  # one process of `_side_by_side`
        torch.set_num_threads(1)
        print(_seconds_per_step(unet_step(args.worker[0], bool(args.worker[1]))))
        return
    sys.path.insert(0, str(REPO / "benchmarks"))
    from digits_budget import cpu_description

    threads = torch.get_num_threads()
    rows: list[dict] = []

    def row(loop: str, variant: str, seconds: float, **extra) -> None:
        rows.append({"loop": loop, "variant": variant, "seconds_per_step": round(seconds, 4), **extra})
        print(rows[-1], flush=True)

    for bf16 in (False, True):
        row("unet", f"{'bf16' if bf16 else 'float32'}, {threads} threads, batch 64",
            _seconds_per_step(unet_step(64, bf16)))
    row("unet", f"float32, channels-last, {threads} threads, batch 64",
        _seconds_per_step(unet_step(64, False, channels_last=True)))
    row("unet", f"bf16, channels-last, {threads} threads, batch 64",
        _seconds_per_step(unet_step(64, True, channels_last=True)))
    if args.compile:
        start = time.perf_counter()
        step = unet_step(64, False, compile_unet=True)
        step()
        compile_s = time.perf_counter() - start
        row("unet", f"float32, torch.compile, {threads} threads, batch 64", _seconds_per_step(step),
            compile_seconds=round(compile_s, 1))
    torch.set_num_threads(1)
    for bf16 in (False, True):
        row("unet", f"{'bf16' if bf16 else 'float32'}, 1 thread, batch 64", _seconds_per_step(unet_step(64, bf16)))
    torch.set_num_threads(threads)
    for bf16 in (False, True):
        per = _side_by_side(32, bf16)
        row("unet", f"{'bf16' if bf16 else 'float32'}, two 1-thread processes side by side, batch 32 each",
            max(per), each=[round(p, 4) for p in per])
    for bf16 in (False, True):
        row("vae", f"{'bf16' if bf16 else 'float32'}, {threads} threads, batch 32", _seconds_per_step(vae_step(bf16)))
    torch.set_num_threads(1)
    for bf16 in (False, True):
        for channels_last in (False, True):
            row("small_cnn", f"{'bf16' if bf16 else 'float32'}, {'channels-last' if channels_last else 'contiguous'}"
                ", 1 thread, batch 64", _seconds_per_step(cnn_step(bf16, channels_last), steps=50))
    out = {"cpu": cpu_description(), "torch": torch.__version__, "rows": rows}
    print(json.dumps(out))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
