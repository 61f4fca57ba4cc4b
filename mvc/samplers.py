"""The built-in samplers of the synthetic sets (declared in `mvc.registry`): what one batch needs (`SampleBatch`)
and three ways to draw it. `draw_conditioned` is MVC's (two-scale guidance on the source's latent and a text mix),
`draw_text` the naive baseline's (text-only guidance from the same mix), `draw_sdedit` Real-Guidance's img2img of
the source with its class prompt, `draw_dafusion` DA-Fusion's (img2img toward the class's learnt token at a t0 drawn
per image). `draw_pool` and `draw_pool_through_vae` are the oracles' (real pool images of the
source's class, as they are or through the VAE: what a perfect generator would give, at its bottleneck or not). A
sampler of your own is a function of a `SampleBatch` in a `Sampler` declaration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from mvc.components import reconstruct
from mvc.imaging import tensor_to_images
from mvc.sampling import initial_noise, sample


@dataclass
class SampleBatch:
    """One batch of one synthetic set: its sources and seeds (one image each), its model and scheduler, its guidance,
    and the conditions, each computed when a sampler asks for it."""

    source_ids: list[int]
    seeds: list[int]
    mode: str  # the mixing mode of the prompts
    unet: Any
    vae: Any
    scheduler: Any  # a diffusers scheduler (the set's sampler's, else generate.scheduler)
    steps: int  # the sampler's, else generate.steps
    s_text: float
    s_image: float
    latent_shape: tuple[int, int, int]  # (C, h, w) at backbone.resolution
    empty: torch.Tensor  # the empty prompt's embedding (the unconditional branch)
    text: Callable[[], torch.Tensor]  # () -> the seeded caption mixes of the sources, (B, L, D)
    condition: Callable[[], torch.Tensor] | None  # () -> e_I of the sources (image-conditioned models only)
    sources: Callable[[], np.ndarray]  # () -> the sources as uint8 images (B, H, W, C), at backbone.resolution
    prompts: list[str]  # each source's class prompt (data.prompt_template)
    pipeline: Any = None  # diffusers' img2img pipeline over the model (samplers with img2img)
    strength: float = 0.5  # generate.img2img_strength
    # () -> a real pool image of each source's class, (B, 3, R, R) in [-1, 1] at backbone.resolution (samplers with
    # `pool`): each pool image of a class drawn once before any is drawn again (`mvc.generate.pool_partners`)
    partners: Callable[[], torch.Tensor] | None = None
    labels: list[int] | None = None  # each source's class
    template: str = "{name}"  # data.prompt_template
    strengths: tuple[float, ...] = ()  # the sampler's t0 values (`Sampler.strengths`): DA-Fusion draws one per image

    def noise(self) -> torch.Tensor:
        """One seeded N(0, I) latent per image, independent of batching."""
        return initial_noise(self.seeds, self.latent_shape)


def draw_conditioned(b: SampleBatch) -> np.ndarray:
    """MVC (Figure 4): InstructPix2Pix's two-scale guidance on the source's latent and a caption mix."""
    return tensor_to_images(sample(b.unet, b.vae, b.scheduler, b.noise(), b.text(), b.empty, b.condition(),
                                   steps=b.steps, s_text=b.s_text, s_image=b.s_image))


def draw_text(b: SampleBatch) -> np.ndarray:
    """Classifier-free guidance on the caption mix alone (the naive baseline: the same prompts and noise)."""
    return tensor_to_images(sample(b.unet, b.vae, b.scheduler, b.noise(), b.text(), b.empty, None, steps=b.steps,
                                   s_text=b.s_text))


def draw_sdedit(b: SampleBatch) -> np.ndarray:
    """SDEdit of each source with its class prompt (Real-Guidance), through the set's scheduler."""
    b.pipeline.scheduler = b.scheduler
    return sdedit(b.pipeline, b.sources(), b.prompts, b.seeds, strength=b.strength, steps=b.steps, guidance=b.s_text)


def sdedit(pipe, sources: np.ndarray, prompts: list[str], seeds: list[int], *, strength: float, steps: int,
           guidance: float) -> np.ndarray:
    """diffusers' img2img (SDEdit) of uint8 source images at strength t0, one seed per image."""
    out = pipe(prompt=prompts, image=[Image.fromarray(x) for x in sources], strength=strength,
               num_inference_steps=steps, guidance_scale=guidance, output_type="np",
               generator=[torch.Generator().manual_seed(s) for s in seeds]).images
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def dafusion_strength(seed: int, strengths) -> float:
    """The t0 of the image drawn with `seed`: one of `strengths`, uniformly, seeded by the image alone (DA-Fusion)."""
    return float(strengths[np.random.default_rng([seed, 0xDAF]).integers(len(strengths))])


def draw_dafusion(b: SampleBatch) -> np.ndarray:
    """DA-Fusion: SDEdit of each source toward its class's learnt token (`mvc.textual_inversion`), at a t0 drawn per
    image from `generate.dafusion_strengths`; the images of one t0 go through img2img together."""
    from mvc.textual_inversion import class_prompt

    b.pipeline.scheduler = b.scheduler
    sources, t0 = b.sources(), np.array([dafusion_strength(s, b.strengths) for s in b.seeds])
    prompts = [class_prompt(b.template, label) for label in b.labels]
    out = np.zeros((len(b.seeds), *sources.shape[1:]), np.uint8)
    for strength in np.unique(t0):
        rows = np.flatnonzero(t0 == strength)
        out[rows] = sdedit(b.pipeline, sources[rows], [prompts[r] for r in rows], [b.seeds[r] for r in rows],
                           strength=float(strength), steps=b.steps, guidance=b.s_text)
    return out


def draw_pool(b: SampleBatch) -> np.ndarray:
    """A real pool image of the source's class, as it is (`oracle_real`: the headroom of a perfect generator)."""
    return tensor_to_images(b.partners())


def draw_pool_through_vae(b: SampleBatch) -> np.ndarray:
    """That pool image encoded and decoded by the model's VAE (its posterior mode) at backbone.resolution
    (`oracle_generator_res`: a perfect generator at this backbone's bottleneck)."""
    return tensor_to_images(reconstruct(b.vae, b.partners()))
