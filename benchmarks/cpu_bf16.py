"""Is bf16 autocast faster than float32 on this CPU? One forward of an SD-1.5-shaped UNet (8 input channels, as MVC
widens it) at 256 px, batch 1, alternating float32 and bf16 autocast `--repeats` times in one process, so both
see the same load. `mvc.runtime.effective_mixed_precision` allows bf16 on a CPU only where it is native
(AVX512-BF16 or AMX); this checks that rule on the machine at hand.

    python benchmarks/cpu_bf16.py   # about 2 minutes on 2 cores; prints one JSON line
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from diffusers import UNet2DConditionModel

    from mvc.footprint import sd15_unet_config
    from mvc.runtime import cpu_has_native_bf16

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config({**sd15_unet_config(), "in_channels": 8}).eval()
    x = torch.randn(1, 8, args.res // 8, args.res // 8)
    text = torch.randn(1, 77, 768)
    t = torch.tensor([500])
    times = {"fp32": [], "bf16_autocast": []}
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=text)  # warm-up (allocations, oneDNN primitives)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            unet(x, t, encoder_hidden_states=text)
        for _ in range(args.repeats):
            for name in times:
                start = time.perf_counter()
                if name == "fp32":
                    unet(x, t, encoder_hidden_states=text)
                else:
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        unet(x, t, encoder_hidden_states=text)
                times[name].append(time.perf_counter() - start)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    best = {k: min(v) for k, v in times.items()}
    print(json.dumps({"cpu": cpu, "capability": torch.backends.cpu.get_cpu_capability(),
                      "native_bf16": cpu_has_native_bf16(), "threads": torch.get_num_threads(), "res": args.res,
                      "seconds": {k: [round(s, 2) for s in v] for k, v in times.items()},
                      "fp32_over_bf16": round(best["fp32"] / best["bf16_autocast"], 2)}))


if __name__ == "__main__":
    main()
