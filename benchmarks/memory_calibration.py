"""Measure the memory of each Stable Diffusion stage's unit of work, one process per measurement, on the CPU (host
memory) or a GPU (device memory), with SD-1.5-shaped random models at a given resolution. The coefficients of the
memory model (`mvc/memory.py`) come from these measurements; the real-size rehearsal
(`scripts/rehearse_real_size.py`) then checks its predictions end to end.

    python benchmarks/memory_calibration.py            # every measurement at 512 px, about 6 minutes on 2 cores
    python benchmarks/memory_calibration.py --res 256  # a quicker look

Writes `benchmarks/memory_calibration.json`: per measurement, the peak over the memory in use once torch and the
libraries were imported (host: ru_maxrss; GPU: max_memory_allocated), and the parameter bytes it held.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = ["vae_encode:1", "vae_encode:4", "unet_train:1", "unet_train:2", "unet_train_full:1", "unet_sample:1",
         "unet_sample:2",
         "vae_decode:1", "vae_decode:4"]


def rss_gib() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**30


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def one(case: str, batch: int, res: int) -> dict:
    """One measurement in this process: the peak above the memory in use before the model was built."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from mvc.footprint import sd15_unet_config, sd15_vae_config

    torch.set_num_threads(2)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    base = torch.cuda.memory_allocated() / 2**30 if cuda else rss_gib()
    latent = res // 8
    t0 = time.perf_counter()
    if case.startswith("vae"):
        vae = AutoencoderKL.from_config(sd15_vae_config()).to(device).eval()
        params = sum(p.numel() for p in vae.parameters())
        with torch.no_grad():
            if case == "vae_encode":
                vae.encode(torch.randn(batch, 3, res, res, device=device)).latent_dist.mode()
            else:
                vae.decode(torch.randn(batch, 4, latent, latent, device=device))
    else:
        unet = UNet2DConditionModel.from_config({**sd15_unet_config(), "in_channels": 8}).to(device)
        params = sum(p.numel() for p in unet.parameters())
        text = torch.randn(batch * (1 if case.startswith("unet_train") else 3), 77, 768, device=device)
        if case.startswith("unet_train"):
            if case == "unet_train":  # unet_train_full: without gradient checkpointing
                unet.enable_gradient_checkpointing()
            unet.train()
            opt = torch.optim.AdamW(unet.parameters(), lr=1e-5, fused=True)
            x = torch.randn(batch, 8, latent, latent, device=device)
            loss = unet(x, torch.tensor([500] * batch, device=device),
                        encoder_hidden_states=text).sample.square().mean()
            loss.backward()
            opt.step()
        else:
            unet.eval()
            with torch.no_grad():
                unet(torch.randn(3 * batch, 8, latent, latent, device=device), torch.tensor([500] * 3 * batch,
                     device=device), encoder_hidden_states=text)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else peak_gib()
    return {"case": case, "batch": batch, "res": res, "device": device, "params": params,
            "param_gib": params * 4 / 2**30, "base_gib": round(base, 3), "peak_above_base_gib": round(peak - base, 3),
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--one", help="internal: run one case NAME:BATCH in this process")
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    if args.one:
        name, batch = args.one.split(":")
        print(json.dumps(one(name, int(batch), args.res)))
        return
    rows = []
    for case in args.cases.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", case, "--res", str(args.res)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    out = {"machine": f"{platform.machine()} {cpu}", "date": time.strftime("%Y-%m-%d"), "rows": rows}
    (HERE / f"memory_calibration{'' if args.res == 512 else f'_{args.res}'}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
