"""What one fine-tuning step sees: the labelled images' latents and caption embeddings, cached once
(`TrainingData`); the seeded generators of each step (`LoopState`, saved with every checkpoint so that a resumed
run draws what it would have); and one MVC batch (`draw_batch`): a target, a same-class conditioning image, a mix
of the class's captions with the target's own, and the conditioning dropout of classifier-free guidance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mvc.artifacts import DiffusionImages, load_caption_embeddings
from mvc.components import encode_latents
from mvc.config import StudyConfig
from mvc.mixing import MixPlan, apply_mix, draw_mix, same_class_draws
from mvc.registry import MODELS


@dataclass
class TrainingData:
    """Everything the loop needs, cached once: latents, conditioning latents, caption embeddings."""

    latents: torch.Tensor  # (N, C, h, w), scaled: the diffusion targets z_0
    cond_latents: torch.Tensor  # (N, C, h, w), unscaled latent modes: e_I
    labels: np.ndarray  # (N,)
    embeddings: torch.Tensor  # (N, L, d): caption embedding of each image
    empty: torch.Tensor  # (L, d)
    latent_std: torch.Tensor | None = None  # (N, C, h, w), scaled: with `target_latents: sample`, z_0 ~ N(mode, std)

    def same_class_partner(self, idx: np.ndarray, mode: str, rng: np.random.Generator) -> np.ndarray:
        """The conditioning image of each target: itself (`same`) or another image of its class (`other`)."""
        if mode == "same":
            return idx
        return same_class_draws(self.labels, idx, 1, rng, exclude_anchor=True)[:, 0]


def training_data(cfg: StudyConfig, vae) -> TrainingData:
    """Latents of the labelled images (targets and conditioning) and their caption embeddings, computed once."""
    emb = load_caption_embeddings(cfg)
    images = DiffusionImages(cfg, emb.frame["image_id"].to_numpy())  # loaded a batch at a time
    modes = encode_latents(vae, images)
    scale = vae.config.scaling_factor
    std = encode_latents(vae, images, part="std") * scale if cfg.finetune.target_latents == "sample" else None
    return TrainingData(latents=modes * scale, cond_latents=modes, labels=emb.labels, embeddings=emb.embeddings,
                        empty=emb.empty, latent_std=std)


class LoopState:
    """The step counter, saved with every accelerate checkpoint. The randomness of step `n` on process `r`
    is drawn from generators seeded by (seed, r, n), so a resumed run draws exactly what it would have."""

    def __init__(self, seed: int, rank: int):
        self.step, self.seed, self.rank = 0, seed, rank

    def generators(self, micro: int = 0) -> tuple[np.random.Generator, torch.Generator]:
        """Generators for micro-batch `micro` of the current step (numpy for sampling, torch for noise)."""
        seq = np.random.SeedSequence([self.seed, self.rank, self.step, micro])
        return np.random.default_rng(seq), torch.Generator().manual_seed(int(seq.generate_state(1)[0]))

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, sd: dict) -> None:
        self.step = int(sd["step"])


@dataclass
class Batch:
    """One fine-tuning batch, with what was drawn to make it (notebook 03 shows one)."""

    targets: np.ndarray  # (B,) rows of the training data: the target images x
    partners: np.ndarray  # (B,) rows of the conditioning images x_c
    plan: MixPlan  # which captions were mixed into each text condition, and their weights
    drop_text: np.ndarray  # (B,) bool: text replaced by the empty prompt's embedding
    drop_image: np.ndarray  # (B,) bool: conditioning latent zeroed
    latents: torch.Tensor  # (B, C, h, w) z_0
    cond: torch.Tensor  # (B, C, h, w) e_I after dropout
    text: torch.Tensor  # (B, L, d) e_T after dropout


def draw_batch(data: TrainingData, cfg: StudyConfig, rng: np.random.Generator, batch_size: int,
               text_only: bool = False, mixing_mode: str | None = None) -> Batch:
    """One batch: target latents, conditioning latents, MVC-mixed text, with conditioning dropout applied.

    `text_only` (the sd_finetuned baseline): no conditioning image (`cond` is empty), the text mixed as MVC's
    (so the two models differ in the image conditioning alone) and dropped with the chance the MVC model drops it
    (`drop_text + drop_both`). `mixing_mode` replaces `finetune.mixing.mode` (`none`: each target's own caption,
    the no-mixing-in-training ablation)."""
    ft = cfg.finetune
    idx = rng.integers(0, len(data.labels), batch_size)
    partner = idx if text_only else data.same_class_partner(idx, ft.cond_image, rng)
    m = ft.mixing
    plan = draw_mix(data.labels, idx, mixing_mode or m.mode, m.k, m.alpha, m.beta_max, rng,
                    include_anchor=True)
    text = apply_mix(data.embeddings, plan)
    cond = data.cond_latents[partner][:, :0] if text_only else data.cond_latents[partner].clone()
    r = rng.random(batch_size)  # [0, dt): text only; [dt, dt+di): image only; [dt+di, dt+di+db): both
    both = (r >= ft.drop_text + ft.drop_image) & (r < ft.drop_text + ft.drop_image + ft.drop_both)
    drop_text = (r < ft.drop_text) | both
    drop_image = ((r >= ft.drop_text) & (r < ft.drop_text + ft.drop_image)) | both
    if text_only:
        drop_text, drop_image = r < ft.drop_text + ft.drop_both, np.zeros(batch_size, bool)
    text[torch.from_numpy(drop_text)] = data.empty
    cond[torch.from_numpy(drop_image)] = 0
    latents = data.latents[idx]
    if data.latent_std is not None:  # a fresh draw from the VAE posterior instead of its mode (augments targets)
        latents = latents + data.latent_std[idx] * torch.from_numpy(rng.standard_normal(latents.shape)).float()
    return Batch(idx, partner, plan, drop_text, drop_image, latents, cond, text)


def make_batch(data: TrainingData, cfg: StudyConfig, rng: np.random.Generator, batch_size: int,
               model: str = "mvc"):
    """(z_0, e_I, e_T) of one batch of fine-tuned model `model` (`mvc.registry.MODELS`), as the training step
    consumes them (e_I is None for a text-only model)."""
    spec = MODELS[model]
    batch = draw_batch(data, cfg, rng, batch_size, not spec.image_conditioned, spec.training_mixing)
    return batch.latents, batch.cond if spec.image_conditioned else None, batch.text
