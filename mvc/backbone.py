"""Stage `backbone`: pretrain the surrogate backbone (or check that a pretrained Stable Diffusion loads).

The surrogate's VAE and UNet are trained on the unlabelled pool with class-free captions (`data.generic_prompt`
+ the image's caption), as Stable Diffusion's pretraining knows images but not the target dataset's labels.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from mvc.artifacts import diffusion_images, load_captions, load_splits
from mvc.components import diffusion_loss, load_backbone, text_components
from mvc.config import StudyConfig
from mvc.embedding_cache import EMPTY_PROMPT
from mvc.encoders import TextEncoder
from mvc.io import atomic_dir, write_csv
from mvc.progress import progress
from mvc.state import stage
from mvc.surrogate import build_surrogate_unet, build_surrogate_vae, noise_scheduler


def _batches(n: int, batch: int, steps: int, gen: torch.Generator):
    for _ in range(steps):
        yield torch.randint(0, n, (batch,), generator=gen)


def pretrain_surrogate(cfg: StudyConfig, show_progress: bool = True) -> Path:
    """Train the surrogate's VAE and UNet on the unlabelled pool with class-free captions; save a diffusers
    folder that `StableDiffusionPipeline.from_pretrained` loads. Returns the folder."""
    from diffusers import StableDiffusionPipeline
    from diffusers.optimization import get_scheduler

    s, res = cfg.backbone.surrogate, cfg.backbone.resolution
    splits, captions = load_splits(cfg), load_captions(cfg)
    pool = splits[splits["split"] == "pool"]
    if pool.empty:
        raise ValueError("backbone.kind: surrogate needs an unlabelled pool to pretrain on, but the pool split is "
                         "empty; raise data.pool_per_class (or lower data.shots), or use backbone.kind: pretrained")
    pool_caps = captions.set_index("image_id").reindex(pool["image_id"])["caption"]
    if pool_caps.isna().any():
        raise ValueError("captions.csv lacks captions of pool images: add 'pool' to caption.splits")
    torch.manual_seed(s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    x = diffusion_images(cfg, pool["image_id"].to_numpy())
    log_rows = []

    vae = build_surrogate_vae(s, res)
    opt = torch.optim.AdamW(vae.parameters(), lr=s.vae_lr)
    sched = get_scheduler("cosine", opt, num_warmup_steps=min(20, s.vae_steps // 10), num_training_steps=s.vae_steps)
    for step, idx in enumerate(progress(_batches(len(x), s.vae_batch_size, s.vae_steps, gen), total=s.vae_steps,
                                    desc="backbone: VAE", disable=not show_progress)):
        post = vae.encode(x[idx]).latent_dist
        recon = vae.decode(post.sample(generator=gen)).sample
        loss = F.mse_loss(recon, x[idx]) + s.vae_kl_weight * post.kl().mean()
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
    latents = dist * scale

    tokenizer, text_model, _ = text_components(cfg)
    encoder = TextEncoder(tokenizer, text_model, cfg.text.max_length)
    texts = [f"{cfg.data.generic_prompt}, {c}" for c in pool_caps]
    uniq = sorted(set(texts))
    table = torch.cat([encoder(uniq[i: i + 256]) for i in range(0, len(uniq), 256)])
    text_idx = torch.tensor([uniq.index(t) for t in texts])
    empty = encoder([EMPTY_PROMPT])[0]

    unet = build_surrogate_unet(s, latents.shape[-1])
    scheduler = noise_scheduler(s)
    opt = torch.optim.AdamW(unet.parameters(), lr=s.unet_lr, weight_decay=1e-2)
    sched = get_scheduler("cosine", opt, num_warmup_steps=min(50, s.unet_steps // 10), num_training_steps=s.unet_steps)
    for step, idx in enumerate(progress(_batches(len(latents), s.unet_batch_size, s.unet_steps, gen), total=s.unet_steps,
                                    desc="backbone: UNet", disable=not show_progress)):
        text = table[text_idx[idx]]
        drop = torch.rand(len(idx), generator=gen) < 0.1  # keep an unconditional model for guidance
        text = torch.where(drop[:, None, None], empty, text)
        loss = diffusion_loss(unet, scheduler, latents[idx], text, None, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        log_rows.append({"part": "unet", "step": step, "loss": loss.item()})

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_model, tokenizer=tokenizer, unet=unet.eval(),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    out = cfg.paths.backbone
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    write_csv(cfg.paths.backbone_loss, pd.DataFrame(log_rows))
    return out


@stage("backbone")
def prepare_backbone(cfg: StudyConfig, show_progress: bool = True) -> dict:
    """Pretrain the surrogate into `runs/<study>/backbone/`, or load the pretrained backbone once to check it."""
    if cfg.backbone.kind == "surrogate":
        pretrain_surrogate(cfg, show_progress)
        return {"source": str(cfg.paths.backbone)}
    load_backbone(cfg.backbone.model, cfg.backbone.revision)
    return {"source": cfg.backbone.model}
