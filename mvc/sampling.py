"""Sampling (the paper's Figure 4): InstructPix2Pix's two-scale guidance, text-only guidance for the naive
set, the scheduler by name, seeded initial noise, and the denoising loop. Pure functions of models and tensors.

The latents and the scheduler's arithmetic stay in float32; only the UNet runs in its own dtype (bf16 on a GPU).
"""

from __future__ import annotations

import torch

from mvc.components import decode_latents


def guided_eps(unet, latents: torch.Tensor, t, text: torch.Tensor, cond: torch.Tensor, empty: torch.Tensor,
               s_text: float, s_image: float) -> torch.Tensor:
    """InstructPix2Pix guidance with the three passes in one batch:
    `eps = eps(0,0) + s_I (eps(0,e_I) - eps(0,0)) + s_T (eps(e_T,e_I) - eps(0,e_I))`."""
    b = latents.shape[0]
    z = torch.cat([latents] * 3)
    c = torch.cat([cond, cond, torch.zeros_like(cond)])
    e = torch.cat([text, empty.expand(b, -1, -1), empty.expand(b, -1, -1)])
    full, image_only, none = unet(torch.cat([z, c], dim=1), t, encoder_hidden_states=e).sample.chunk(3)
    return none + s_image * (image_only - none) + s_text * (full - image_only)


def text_guided_eps(unet, latents, t, text, empty, scale: float) -> torch.Tensor:
    """Classifier-free guidance on text alone (the naive baseline), both passes in one batch."""
    b = latents.shape[0]
    cond, uncond = unet(torch.cat([latents] * 2), t,
                        encoder_hidden_states=torch.cat([text, empty.expand(b, -1, -1)])).sample.chunk(2)
    return uncond + scale * (cond - uncond)


def make_scheduler(name: str, config):
    """A sampling scheduler by name (`ddim`, `dpmsolver++`, `euler`) from a training scheduler's config;
    DDIM with `clip_sample=False`: clipping the predicted clean latent to [-1, 1] ruins latent sampling."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    if name == "ddim":
        return DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=False)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
    return EulerDiscreteScheduler.from_config(config)


def initial_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """One seeded N(0, I) latent per image, independent of batching."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


@torch.no_grad()
def sample(unet, vae, scheduler, noise: torch.Tensor, text: torch.Tensor, empty: torch.Tensor,
           cond: torch.Tensor | None, *, steps: int, s_text: float, s_image: float = 1.0,
           decode: bool = True) -> torch.Tensor:
    """Denoise `noise` to images in [-1, 1]: two-scale guidance when `cond` is given, else text-only
    (`decode=False`: return the final latents)."""
    device, dtype = unet.device, unet.dtype
    scheduler.set_timesteps(steps, device=device)
    z = noise.to(device, torch.float32) * scheduler.init_noise_sigma  # z_T, kept in float32 throughout
    text, empty = text.to(device, dtype), empty.to(device, dtype)
    cond = cond.to(device, dtype) if cond is not None else None
    for t in scheduler.timesteps:
        zin = scheduler.scale_model_input(z, t).to(dtype)
        if cond is None:
            eps = text_guided_eps(unet, zin, t, text, empty, s_text)
        else:
            eps = guided_eps(unet, zin, t, text, cond, empty, s_text, s_image)
        z = scheduler.step(eps.float(), t, z).prev_sample
    if not decode:
        return z
    return decode_latents(vae, z)
