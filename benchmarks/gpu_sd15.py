"""GPU benchmarks on a Stable Diffusion 1.5 sized model (random weights from SD 1.5's configs; speed does not
depend on weight values), each against a reference in the same run.

- train: MVC fine-tuning steps (cached latents and caption embeddings, bf16 autocast, SDPA) against a loop
  written as diffusers' `train_instruct_pix2pix.py` writes it (VAE and text encoder run every step), same batch;
  then peak memory per batch size with gradient checkpointing + bf16 (the consumer-card setting).
- generate: 512x512 (or --res), 30 steps, three UNet passes a step: `StableDiffusionInstructPix2PixPipeline` as
  users run it (bf16 weights, its default attention and scheduler) against `mvc.generate.sample` as the generate
  stage runs it (bf16 UNet behind `run_in_dtype`, float32 latents, channels-last, the three passes in one batch),
  then + torch.compile; `--gen-batch 0` first finds the largest batch of powers of two that fits.
- `--profile`: the top CUDA kernels of one step of each of the kit's loops (torch.profiler), for the note on a goal
  that is missed.

Usage: python benchmarks/gpu_sd15.py --out results.json [--tiny] [--res 256]   (--tiny: a CPU dry run of the code)
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

UNET_FWD_GFLOP_512 = 677.0  # one SD 1.5 UNet forward at 512x512 (64x64 latents), per image
PEAK_BF16_TFLOPS = 989.0  # H100/H200 SXM dense bf16


def sd15_parts(tiny: bool, device: str = "cpu"):
    with torch.device(device):  # random init on the GPU: seconds instead of a minute
        return _sd15_parts(tiny)


def _sd15_parts(tiny: bool):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if tiny:
        unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                    cross_attention_dim=32,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8,
                                    norm_num_groups=8)
        vae = AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, sample_size=16)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=4))
    else:
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                            sample_size=512, scaling_factor=0.18215)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                            num_attention_heads=12, max_position_embeddings=77,
                                            hidden_act="quick_gelu"))
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          steps_offset=1)
    return unet, vae, text, sched


def timed(fn, warmup: int, iters: int, device: str) -> float:
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def peak_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def bench_train(args, device: str) -> dict:
    from mvc.components import diffusion_loss, widen_conv_in
    from mvc.surrogate import clip_tokenizer

    res = 16 if args.tiny else args.res
    unet, vae, text, sched = sd15_parts(args.tiny, device)
    unet = widen_conv_in(unet).to(device).train()
    vae = vae.to(device, torch.bfloat16).requires_grad_(False)
    text = text.to(device, torch.bfloat16).requires_grad_(False)
    tok = clip_tokenizer(77)
    b = args.train_batch
    images = torch.randn(b, 3, res, res, device=device)
    ids = tok(["a photo of a cat, sitting on a red sofa"] * b, padding="max_length", max_length=77,
              return_tensors="pt").input_ids.to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    out = {"batch": b}

    def reference_step():  # train_instruct_pix2pix.py: VAE + text encoder every step, bf16 autocast on the UNet
        with torch.no_grad():
            latents = vae.encode(images.to(torch.bfloat16)).latent_dist.sample() * vae.config.scaling_factor
            enc = text(ids)[0]
            orig = vae.encode(images.to(torch.bfloat16)).latent_dist.mode()
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (b,), device=device)
        noisy = sched.add_noise(latents, noise, t)
        with torch.autocast(device, dtype=torch.bfloat16):
            pred = unet(torch.cat([noisy, orig], 1), t, enc).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with torch.no_grad():  # ours: latents and caption embeddings computed once, before the loop
        cached_latents = (vae.encode(images.to(torch.bfloat16)).latent_dist.mode() * vae.config.scaling_factor).float()
        cached_cond = vae.encode(images.to(torch.bfloat16)).latent_dist.mode().float()
        cached_text = text(ids)[0].float()

    def ours_step():
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = diffusion_loss(unet, sched, cached_latents, cached_text, cached_cond)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    flop = 3 * UNET_FWD_GFLOP_512 * 1e9 * (res / 512) ** 2
    variants = [("reference_ip2p_loop", reference_step), ("mvc_cached", ours_step)]
    if args.train_fast:  # finetune.fused_adam + finetune.channels_last + finetune.compile
        def fast_step():
            ours_step()

        def setup_fast():
            nonlocal opt
            unet.to(memory_format=torch.channels_last)
            opt = torch.optim.AdamW(unet.parameters(), lr=1e-5, fused=True)
            unet.forward = torch.compile(unet.forward)

        variants.append(("mvc_cached_fused_channels_last_compiled", fast_step))
    for name, step in variants:
        if name.endswith("compiled"):
            t0 = time.perf_counter()
            setup_fast()
            step()
            out["compile_s"] = time.perf_counter() - t0
        reset_peak(device)
        s = timed(step, args.warmup, args.iters, device)
        out[name] = {"s_per_step": s, "samples_per_s": b / s, "peak_gib": peak_gib(device),
                     "mfu": b / s * flop / (PEAK_BF16_TFLOPS * 1e12)}
        print(name, out[name], flush=True)
    best = min((k for k in out if k.startswith("mvc_")), key=lambda k: out[k]["s_per_step"])
    out["speedup"] = out["reference_ip2p_loop"]["s_per_step"] / out[best]["s_per_step"]
    if args.profile:
        out["top_kernels"] = top_kernels(ours_step, device)
    if args.train_fast:
        return out

    # peak memory per batch size, gradient checkpointing + bf16 autocast (what a 24 GB card would use)
    unet.enable_gradient_checkpointing()
    out["memory_gc_bf16"] = {}
    for bs in args.memory_batches:
        reset_peak(device)
        try:
            lat = cached_latents[:1].expand(bs, -1, -1, -1)
            cond, txt = cached_cond[:1].expand(bs, -1, -1, -1), cached_text[:1].expand(bs, -1, -1)

            def step(lat=lat, txt=txt, cond=cond):
                with torch.autocast(device, dtype=torch.bfloat16):
                    loss = diffusion_loss(unet, sched, lat.contiguous(), txt.contiguous(), cond.contiguous())
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            s = timed(step, 1, 2, device)
            out["memory_gc_bf16"][bs] = {"peak_gib": peak_gib(device), "samples_per_s": bs / s}
        except torch.OutOfMemoryError:
            out["memory_gc_bf16"][bs] = "out of memory"
        print("gc+bf16 batch", bs, out["memory_gc_bf16"][bs], flush=True)
    return out


def bench_generate(args, device: str, checkpoint=lambda out: None) -> dict:
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline
    from PIL import Image

    from mvc.components import widen_conv_in
    from mvc.runtime import run_in_dtype
    from mvc.sampling import initial_noise, make_scheduler, sample
    from mvc.surrogate import clip_tokenizer

    res, steps = (16 if args.tiny else args.res), args.gen_steps
    unet, vae, text, sched = sd15_parts(args.tiny, device)
    unet = widen_conv_in(unet)
    latent = res // 8 if not args.tiny else unet.config.sample_size
    b = args.gen_batch or largest_batch(unet, latent, device, args.tiny)
    out = {"batch": b, "steps": steps, "res": res}
    flop = 3 * steps * UNET_FWD_GFLOP_512 * 1e9 * (res / 512) ** 2

    # 1. the diffusers pipeline as users run it: bf16 weights (torch_dtype=torch.bfloat16), its own scheduler,
    # default attention
    pipe = StableDiffusionInstructPix2PixPipeline(vae=vae, text_encoder=text, tokenizer=clip_tokenizer(77), unet=unet,
                                                  scheduler=EulerAncestralDiscreteScheduler.from_config(sched.config),
                                                  safety_checker=None, feature_extractor=None,
                                                  requires_safety_checker=False).to(device, torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    image = Image.new("RGB", (res, res), "gray")
    reset_peak(device)

    def run_pipe(n_steps: int = steps):
        pipe(["a photo of a cat"] * b, image=[image] * b, num_inference_steps=n_steps, output_type="latent")

    run_pipe(2)  # warm-up
    s = timed(run_pipe, 0, 1, device)
    out["pipeline_bf16"] = {"s": s, "images_per_s": b / s, "peak_gib": peak_gib(device),
                            "mfu": b / s * flop / (PEAK_BF16_TFLOPS * 1e12)}
    print("pipeline", out["pipeline_bf16"], flush=True)
    checkpoint(out)

    # 2. ours, as the generate stage runs it: a bf16 UNet called in float32 (run_in_dtype), float32 latents and
    # VAE, channels-last, the three guidance passes in one batch
    unet = run_in_dtype(pipe.unet.to(memory_format=torch.channels_last).eval())
    vae = pipe.vae.to(torch.float32)
    scheduler = make_scheduler("ddim", sched.config)
    c = unet.config
    noise = initial_noise(list(range(b)), (4, latent, latent))
    txt = torch.randn(b, 77, c.cross_attention_dim)
    empty = torch.randn(77, c.cross_attention_dim)
    cond = torch.randn(b, 4, latent, latent)

    def run_ours():
        sample(unet, vae, scheduler, noise, txt, empty, cond, steps=steps, s_text=3.0, s_image=1.5, decode=False)

    for name in ("mvc_bf16_channels_last", "mvc_bf16_compiled"):
        if name == "mvc_bf16_compiled":
            if args.no_compile:
                break
            t0 = time.perf_counter()
            unet.forward = torch.compile(unet.forward)
            run_ours()
            out["compile_s"] = time.perf_counter() - t0
        reset_peak(device)
        s = timed(run_ours, 1, 1, device)
        out[name] = {"s": s, "images_per_s": b / s, "peak_gib": peak_gib(device),
                     "mfu": b / s * flop / (PEAK_BF16_TFLOPS * 1e12)}
        print(name, out[name], flush=True)
        checkpoint(out)
    best = max((k for k in out if k.startswith("mvc_")), key=lambda k: out[k]["images_per_s"])
    out["speedup_vs_pipeline"] = out[best]["images_per_s"] / out["pipeline_bf16"]["images_per_s"]
    if args.profile:
        out["top_kernels"] = top_kernels(lambda: sample(unet, vae, scheduler, noise, txt, empty, cond, steps=2,
                                                        s_text=3.0, s_image=1.5,
                                                        decode=False), device)
    return out


def largest_batch(unet, latent: int, device: str, tiny: bool) -> int:
    """The largest power-of-two batch (8 to 256) whose guided forward (three passes) fits, in bf16."""
    if tiny or device != "cuda":
        return 4
    probe = unet.to(device, torch.bfloat16).eval()
    best = 8
    for b in (8, 16, 32, 64, 128, 256):
        try:
            with torch.no_grad():
                probe(torch.randn(3 * b, 8, latent, latent, device=device, dtype=torch.bfloat16),
                      torch.full((3 * b,), 500, device=device),
                      encoder_hidden_states=torch.randn(3 * b, 77, 768, device=device, dtype=torch.bfloat16))
            best = b
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    unet.to(torch.float32)
    return best


def top_kernels(fn, device: str, n: int = 10) -> list[dict]:
    """The `n` kernels (CUDA) or operators (CPU) that take most time in one call of `fn`."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
    key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)[:n]
    total = sum(getattr(e, key, 0) for e in prof.key_averages()) or 1
    return [{"name": e.key[:90], "ms": round(getattr(e, key, 0) / 1e3, 2),
             "share": round(getattr(e, key, 0) / total, 3)}
            for e in events]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="gpu_sd15.json")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--only", choices=["train", "generate"], default=None)
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--memory-batches", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--gen-batch", type=int, default=32, help="0: the largest power of two that fits")
    p.add_argument("--res", type=int, default=512, help="image side (SD 1.5 at 512; 256 for CIFAR-size inputs)")
    p.add_argument("--profile", action="store_true", help="top kernels of one step of each of the kit's loops")
    p.add_argument("--gen-steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--train-fast", action="store_true", help="add fused AdamW + channels-last + compile (skips memory)")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "torch": torch.__version__}

    def write() -> None:  # after each part, so a run cut short still reports what it measured
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)

    if args.only in (None, "train"):
        result["train"] = bench_train(args, device)
        write()
        reset_peak(device)
    if args.only in (None, "generate"):
        result["generate"] = bench_generate(args, device, lambda out: (result.__setitem__("generate", out), write()))
        write()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
