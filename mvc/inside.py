"""Looking inside the stages, for the notebooks: what one fine-tuning batch is made of and how `conv_in` was widened
(notebook 03), one source under a grid of guidance scales (notebook 04), one classifier batch with its synthetic
replacements (notebook 05). Each is drawn as its stage draws, with its own seed, and changes nothing on disk."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from mvc import figures
from mvc.artifacts import backbone_source, diffusion_images, load_caption_embeddings
from mvc.classifiers import RunSpec, SyntheticSampler
from mvc.classify import load_classification_data
from mvc.components import load_backbone, widen_conv_in
from mvc.config import StudyConfig
from mvc.generate import latent_shape, load_generation_models, mixes_of
from mvc.grid import grid
from mvc.imaging import tensor_to_images
from mvc.registry import mvc_set_names, role_of
from mvc.runtime import pick_device, sampling_dtype
from mvc.sampling import initial_noise, make_scheduler, sample
from mvc.training_batches import TrainingData, draw_batch

# ----------------------------------------------------------------------------------------------------------
# notebook 03: fine-tuning


def finetune_batch(cfg: StudyConfig, n: int = 6, seed: int = 0) -> pd.DataFrame:
    """What one fine-tuning batch is made of: target and conditioning images, the mixed captions with their
    weights, and which conditions were dropped. Drawn as the training loop draws, with its own seed."""
    emb = load_caption_embeddings(cfg)
    empty_latents = torch.zeros(len(emb.labels), 0)  # the draw needs no latents
    data = TrainingData(empty_latents, empty_latents, emb.labels, emb.embeddings, emb.empty)
    batch = draw_batch(data, cfg, np.random.default_rng(seed), n)
    ids, texts = emb.frame["image_id"].to_numpy(), emb.frame["text"].tolist()
    mixed = [" + ".join(f"{w:.2f} x [{texts[i]}]" for i, w in zip(batch.plan.indices[b], batch.plan.weights[b]))
             for b in range(n)]
    return pd.DataFrame({"target_image_id": ids[batch.targets], "condition_image_id": ids[batch.partners],
                         "text_condition": mixed, "text_dropped": batch.drop_text, "image_dropped": batch.drop_image})


def conv_in_table(cfg: StudyConfig) -> pd.DataFrame:
    """`conv_in` of the backbone, widened (step 0) and fine-tuned: input channels and the weight norm on the
    latent channels and on the conditioning-image channels (zero at step 0: the widened model is the backbone)."""
    before = load_backbone(backbone_source(cfg), cfg.backbone.revision).unet
    c = before.conv_in.in_channels
    widened = widen_conv_in(load_backbone(backbone_source(cfg), cfg.backbone.revision).unet)
    tuned = load_backbone(cfg.paths.mvc_model, field="runs/<study>/mvc").unet
    rows = []
    for name, unet in (("backbone", before), ("widened, step 0", widened), ("MVC fine-tuned", tuned)):
        w = unet.conv_in.weight.detach().float()
        rows.append({"model": name, "in_channels": unet.conv_in.in_channels,
                     "norm on z_t channels": round(float(w[:, :c].norm()), 4),
                     "norm on e_I channels": round(float(w[:, c:].norm()), 4) if w.shape[1] > c else None})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------------
# notebook 04: generation


GUIDANCE_TEXT_SCALES = (1.0, 2.0, 4.0, 7.0)  # the columns and rows of notebook 04's guidance grid
GUIDANCE_IMAGE_SCALES = (1.0, 1.5, 2.5, 4.0)


def guidance_figure(cfg: StudyConfig, source_row: int = 0, seed: int = 0):
    """`guidance_grid` as one image grid, its columns titled with their text scale (notebook 04)."""
    return figures.image_grid(guidance_grid(cfg, source_row=source_row, seed=seed),
                              ["source"] + [f"s_T={s}" for s in GUIDANCE_TEXT_SCALES])


def guidance_grid(cfg: StudyConfig, text_scales=GUIDANCE_TEXT_SCALES, image_scales=GUIDANCE_IMAGE_SCALES,
                  source_row: int = 0, seed: int = 0) -> list[tuple[str, list[np.ndarray]]]:
    """One source image under every pair of guidance scales, the same noise and mix throughout (notebook 04):
    a row per `s_I`, a column per `s_T`, the source image first."""
    g = cfg.generate
    device = pick_device(cfg.device)
    emb = load_caption_embeddings(cfg)
    dtype = sampling_dtype(device, cfg.generate.cpu_precision)
    unet, vae, sched_cfg, cond = load_generation_models(cfg, emb, device, dtype,
                                                        sets=list(mvc_set_names(g.modes[:1])))["mvc"]
    rows = np.array([source_row])
    text = mixes_of(emb, rows, [seed], g.modes[0], g.mixing)
    noise = initial_noise([seed], latent_shape(cfg, unet, vae))
    source = tensor_to_images(diffusion_images(cfg, emb.frame["image_id"].to_numpy()[rows]))[0]
    grid = []
    for s_image in image_scales:
        imgs = [tensor_to_images(sample(unet, vae, make_scheduler(g.scheduler, sched_cfg), noise, text, emb.empty,
                                        cond[rows], steps=g.steps, s_text=s_text, s_image=s_image))[0]
                for s_text in text_scales]
        grid.append((f"s_I={s_image}", [source] + imgs))
    return grid


# ----------------------------------------------------------------------------------------------------------
# notebook 05: classification


def classifier_batch(cfg: StudyConfig, method: str | None = None, n: int = 16,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One training batch of `method` (default: the method under test) before augmentation, as uint8 (n, H, W, C)
    images, and which of them are synthetic replacements of their real source (notebook 05)."""
    method = method or role_of("under_test")
    spec = next((s for s in grid(cfg) if s.method == method), RunSpec(method, seed))
    data = load_classification_data(cfg, list(spec.synthetic_sets))
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(data.train_y), n)
    x, used = data.train_x[rows], np.zeros(n, bool)
    if spec.synthetic_sets:
        x, used = SyntheticSampler(data, list(spec.synthetic_sets))(rows, spec.p_synthetic, rng, x)
    return x.permute(0, 2, 3, 1).numpy(), used
