"""Stage `backbone`: pretrain the surrogate backbone (or check that a pretrained Stable Diffusion loads).

The surrogate's VAE and UNet are trained on the unlabelled pool with class-free captions (`data.generic_prompt`
+ the image's caption) and, where the profile names one, on a labelled source domain that is not the target (for
digits: printed digits) captioned with the class prompt: as Stable Diffusion's pretraining knows the classes but
not the target domain.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mvc.artifacts import backbone_source, class_names, diffusion_images, load_captions, stored_splits
from mvc.captioners import AttributeCaptioner, caption_text
from mvc.components import diffusion_loss, load_backbone, set_attention_kernel, text_components
from mvc.config import StudyConfig
from mvc.embedding_cache import EMPTY_PROMPT
from mvc.encoders import TextEncoder
from mvc.imaging import images_to_tensor
from mvc.io import atomic_dir, write_csv
from mvc.progress import progress
from mvc.resources import check_memory
from mvc.runtime import adamw, effective_mixed_precision
from mvc.source_domains import printed_digits
from mvc.state import stage
from mvc.surrogate import build_surrogate_unet, build_surrogate_vae, noise_scheduler


def _batches(n: int, batch: int, steps: int, gen: torch.Generator):
    for _ in range(steps):
        yield torch.randint(0, n, (batch,), generator=gen)


def source_domain(cfg: StudyConfig, names: list[str]) -> tuple[torch.Tensor, list[str]]:
    """The labelled source-domain images at the backbone's resolution, each captioned `prompt(y) + ", " +
    caption(x)` as the study's own captions are (none when `backbone.surrogate.source_domain` is none)."""
    s = cfg.backbone.surrogate
    if s.source_domain == "none":
        return torch.empty(0), []
    images, labels = printed_digits(names, s.source_per_class, cfg.data.resolution, s.seed)
    if cfg.data.channels == 3:
        images = np.repeat(images, 3, axis=-1)
    captions = AttributeCaptioner()(images)
    texts = [caption_text(cfg.data.prompt_template, names[y], c) for y, c in zip(labels, captions)]
    return images_to_tensor(images, cfg.backbone.resolution), texts


def _pretraining_data(cfg: StudyConfig) -> tuple[torch.Tensor, list[str]]:
    """The pool's images with their class-free captions, and the labelled source domain's (if any) with class
    captions: what the surrogate learns from."""
    splits, captions = stored_splits(cfg), load_captions(cfg)
    pool = splits[splits["split"] == "pool"]
    if pool.empty:
        raise ValueError("backbone.kind: surrogate needs an unlabelled pool to pretrain on, but the pool split is "
                         "empty; raise data.pool_per_class (or lower data.labelled_per_class), "
                         "or use backbone.kind: pretrained")
    pool_caps = captions.set_index("image_id").reindex(pool["image_id"])["caption"]
    if pool_caps.isna().any():
        raise ValueError("captions.csv lacks captions of pool images: add 'pool' to caption.splits")
    x = diffusion_images(cfg, pool["image_id"].to_numpy())
    texts = [f"{cfg.data.generic_prompt}, {c}" for c in pool_caps]
    source_x, source_texts = source_domain(cfg, class_names(splits))
    if source_texts:  # the labelled source domain: the classes, named, in another domain
        x, texts = torch.cat([x, source_x]), texts + source_texts
    return x, texts


def _bf16(s) -> bool:
    """Whether the pretraining steps run under bf16 autocast: `backbone.surrogate.mixed_precision` asks for it and the
    CPU computes bf16 natively (`mvc.runtime.effective_mixed_precision`); the losses are taken in float32."""
    return effective_mixed_precision(s.mixed_precision, "cpu", "backbone.surrogate.mixed_precision") == "bf16"


def _train_vae(s, resolution: int, x: torch.Tensor, gen: torch.Generator, log_rows: list[dict],
               show_progress: bool):
    """The VAE trained to reconstruct `x` (MSE plus a small KL term), frozen, with the scaling factor that gives
    its latents unit variance; returns it and the scaled latent means of `x`."""
    from diffusers.optimization import get_scheduler

    vae, bf16 = build_surrogate_vae(s, resolution), _bf16(s)
    opt = adamw(vae.parameters(), "cpu", lr=s.vae_lr)
    sched = get_scheduler("cosine", opt, num_warmup_steps=min(20, s.vae_steps // 10), num_training_steps=s.vae_steps)
    for step, idx in enumerate(progress(_batches(len(x), s.vae_batch_size, s.vae_steps, gen), total=s.vae_steps,
                                    desc="backbone: VAE", disable=not show_progress)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            post = vae.encode(x[idx]).latent_dist
            recon = vae.decode(post.sample(generator=gen)).sample
        loss = F.mse_loss(recon.float(), x[idx]) + s.vae_kl_weight * post.kl().float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        log_rows.append({"part": "vae", "step": step, "loss": loss.item()})
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        dist = torch.cat([vae.encode(x[i: i + 256]).latent_dist.mean for i in range(0, len(x), 256)])
    scale = float(1.0 / dist.std())
    vae.register_to_config(scaling_factor=scale)
    return vae, dist * scale


def _text_table(cfg: StudyConfig, texts: list[str]):
    """The frozen text encoder's parts and its embedding of each distinct caption once: (tokenizer, model, the
    table, each caption's row in it, the empty prompt's embedding)."""
    tokenizer, text_model, _ = text_components(cfg)
    encoder = TextEncoder(tokenizer, text_model, cfg.text.max_length)
    uniq = sorted(set(texts))
    table = torch.cat([encoder(uniq[i: i + 256]) for i in range(0, len(uniq), 256)])
    row_of = {t: i for i, t in enumerate(uniq)}  # a dict: list.index would be quadratic in the pool size
    return tokenizer, text_model, table, torch.tensor([row_of[t] for t in texts]), encoder([EMPTY_PROMPT])[0]


def _train_unet(s, latents: torch.Tensor, text_width: int, table: torch.Tensor, text_idx: torch.Tensor,
                empty: torch.Tensor, gen: torch.Generator, log_rows: list[dict], show_progress: bool):
    """The text-conditioned UNet trained on the latents (a tenth of the captions dropped, so that the model also
    learns the unconditional prediction guidance needs); returns it and its noise scheduler."""
    from diffusers.optimization import get_scheduler

    unet = build_surrogate_unet(s, latents.shape[-1], text_width)
    set_attention_kernel(unet, s.attention)
    scheduler, bf16 = noise_scheduler(s), _bf16(s)
    opt = adamw(unet.parameters(), "cpu", lr=s.unet_lr, weight_decay=1e-2)
    sched = get_scheduler("cosine", opt, num_warmup_steps=min(50, s.unet_steps // 10), num_training_steps=s.unet_steps)
    batches = _batches(len(latents), s.unet_batch_size, s.unet_steps, gen)
    for step, idx in enumerate(progress(batches, total=s.unet_steps, desc="backbone: UNet", disable=not show_progress)):
        text = table[text_idx[idx]]
        drop = torch.rand(len(idx), generator=gen) < 0.1  # keep an unconditional model for guidance
        text = torch.where(drop[:, None, None], empty, text)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion_loss(unet, scheduler, latents[idx], text, None, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        log_rows.append({"part": "unet", "step": step, "loss": loss.item()})
    return unet.eval(), scheduler


def pretrain_surrogate(cfg: StudyConfig, show_progress: bool = True) -> Path:
    """Train the surrogate's VAE and UNet on the unlabelled pool with class-free captions, and on the labelled
    source domain (if any) with class captions; save a diffusers folder that `StableDiffusionPipeline` loads."""
    from diffusers import StableDiffusionPipeline

    s = cfg.backbone.surrogate
    torch.manual_seed(s.seed)  # before the data: the order the draws were always made in
    gen = torch.Generator().manual_seed(s.seed)
    x, texts = _pretraining_data(cfg)
    log_rows: list[dict] = []
    vae, latents = _train_vae(s, cfg.backbone.resolution, x, gen, log_rows, show_progress)
    tokenizer, text_model, table, text_idx, empty = _text_table(cfg, texts)
    unet, scheduler = _train_unet(s, latents, text_model.config.hidden_size, table, text_idx, empty, gen, log_rows,
                                  show_progress)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_model, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    out = cfg.paths.backbone
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    write_csv(cfg.paths.backbone_loss, pd.DataFrame(log_rows))
    return out


@stage("backbone", reader=backbone_source)
def prepare_backbone(cfg: StudyConfig, show_progress: bool = True) -> dict:
    """Pretrain the surrogate into `runs/<study>/backbone/`, or load the pretrained backbone once to check it."""
    if cfg.backbone.kind == "surrogate":
        check_memory(cfg, "backbone")
        pretrain_surrogate(cfg, show_progress)
        return {"source": str(cfg.paths.backbone), "device": "cpu"}  # the surrogate is pretrained on the CPU
    load_backbone(cfg.backbone.model, cfg.backbone.revision)  # loaded once to check it: nothing runs
    return {"source": cfg.backbone.model}
