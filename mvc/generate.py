"""Generation (the paper's Figure 4): MVC images with two guidance scales, and the naive baseline.

For every labelled training image (the source) and index `j < M`, one image per generator:
`mvc_<mode>` (the fine-tuned model, conditioned on the source's latent and an MVC mix of its class's
captions) and `naive` (the backbone before fine-tuning, text only, the same mixed prompt as `mvc_coarse`).
Work items are sharded across processes with accelerate; every image is written atomically and then
listed in its process's manifest, so a killed run, started again, ends with exactly the expected set.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from mvc import state
from mvc.config import GenerateConfig, StudyConfig
from mvc.io import append_rows, atomic_path, read_rows, write_csv

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["image_id", "source_image_id", "index", "label", "mode", "seed", "path"]


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
           cond: torch.Tensor | None, steps: int, s_text: float, s_image: float = 1.0, decode: bool = True) -> torch.Tensor:
    """Denoise `noise` to images in [-1, 1]: two-scale guidance when `cond` is given, else text-only
    (`decode=False`: return the final latents)."""
    device, dtype = unet.device, unet.dtype
    scheduler.set_timesteps(steps, device=device)
    z = noise.to(device, dtype) * scheduler.init_noise_sigma
    text, empty = text.to(device, dtype), empty.to(device, dtype)
    cond = cond.to(device, dtype) if cond is not None else None
    for t in scheduler.timesteps:
        zin = scheduler.scale_model_input(z, t)
        if cond is None:
            eps = text_guided_eps(unet, zin, t, text, empty, s_text)
        else:
            eps = guided_eps(unet, zin, t, text, cond, empty, s_text, s_image)
        z = scheduler.step(eps, t, z).prev_sample
    if not decode:
        return z
    return vae.decode(z / vae.config.scaling_factor).sample.float().clamp(-1, 1)


@dataclass(frozen=True)
class WorkItem:
    generator: str
    source_image_id: int
    index: int
    seed: int

    @property
    def image_id(self) -> str:
        return f"{self.generator}-{self.source_image_id}-{self.index}"


def generators(g: GenerateConfig) -> list[str]:
    return [f"mvc_{m.replace('+', '_')}" for m in g.modes] + (["naive"] if g.naive else [])


def generator_mode(g: GenerateConfig, name: str) -> str:
    """The mixing mode of a generator (the naive baseline uses the first MVC mode's prompts)."""
    if name == "naive":
        return g.modes[0]
    return next(m for m in g.modes if f"mvc_{m.replace('+', '_')}" == name)


def item_seed(base: int, mode: str, source: int, index: int) -> int:
    """A seed per (mode, source, index): the naive baseline shares it with the MVC generator of its mode."""
    key = sum(ord(ch) * 31 ** i for i, ch in enumerate(mode)) % 2**31
    return int(np.random.SeedSequence([base, key, source, index]).generate_state(1)[0] % 2**31)


def work_items(g: GenerateConfig, source_ids: list[int], name: str) -> list[WorkItem]:
    mode = generator_mode(g, name)
    return [WorkItem(name, int(s), j, item_seed(g.seed, mode, int(s), j))
            for s in source_ids for j in range(g.images_per_source)]


def shard(items: list, rank: int, world: int) -> list:
    """Process `rank`'s contiguous slice of `items` (as accelerate's `split_between_processes` cuts it)."""
    per, extra = divmod(len(items), world)
    lo = rank * per + min(rank, extra)
    return items[lo: lo + per + (1 if rank < extra else 0)]


def _done_ids(folder: Path) -> set[str]:
    done = set()
    for f in [folder / "manifest.csv", *folder.glob(".manifest-*.csv")]:
        rows = read_rows(f)
        if rows is not None:
            done.update(r for r, p in zip(rows["image_id"], rows["path"]) if (folder / p).exists())
    return done


def generate_set(cfg: StudyConfig, name: str, models: dict, emb, rank: int = 0, world: int = 1,
                 show_progress: bool = True, max_batches: int | None = None) -> int:
    """Generate this process's missing images of generator `name`; returns how many it made."""
    from mvc.models import tensor_to_images

    g = cfg.generate
    folder = cfg.paths.synthetic / name
    items = shard(work_items(g, emb.frame["image_id"].tolist(), name), rank, world)
    done = _done_ids(folder)
    todo = [it for it in items if it.image_id not in done]
    if not todo:
        return 0
    mode = generator_mode(g, name)
    is_mvc = name != "naive"
    unet, vae, sched_cfg, cond_latents = models["mvc" if is_mvc else "naive"]
    scheduler = make_scheduler(g.scheduler, sched_cfg)
    latent_shape = (unet.config.out_channels, unet.config.sample_size, unet.config.sample_size)
    label_of = dict(zip(emb.frame["image_id"], emb.frame["label"]))
    class_of = dict(zip(emb.frame["label"], emb.frame.get("class_name", emb.frame["label"])))
    manifest = folder / f".manifest-{rank}.csv"
    made = 0
    bar = tqdm(total=len(todo), desc=f"generate {name}", unit="img", disable=not show_progress)
    for n, lo in enumerate(range(0, len(todo), g.batch_size)):
        if max_batches is not None and n >= max_batches:
            break
        batch = todo[lo: lo + g.batch_size]
        rows = emb.row_of(np.array([it.source_image_id for it in batch]))
        text = seeded_mixes(emb, rows, [it.seed for it in batch], mode, g.mixing)
        noise = initial_noise([it.seed for it in batch], latent_shape)
        if is_mvc:
            x = sample(unet, vae, scheduler, noise, text, emb.empty, cond_latents[rows], g.steps,
                       g.guidance_text, g.guidance_image)
        else:
            x = sample(unet, vae, scheduler, noise, text, emb.empty, None, g.steps, g.naive_guidance)
        records = []
        for it, img in zip(batch, tensor_to_images(x)):
            rel = f"{class_of[label_of[it.source_image_id]]}/{it.image_id}.png"
            target = folder / rel
            with atomic_path(target) as tmp:
                Image.fromarray(img).save(tmp, format="PNG")
            records.append({"image_id": it.image_id, "source_image_id": it.source_image_id, "index": it.index,
                            "label": label_of[it.source_image_id], "mode": "naive" if not is_mvc else mode,
                            "seed": it.seed, "path": rel})
        append_rows(manifest, pd.DataFrame(records, columns=MANIFEST_COLUMNS))
        made += len(batch)
        bar.update(len(batch))
    bar.close()
    return made


def finalize_set(cfg: StudyConfig, name: str, source_ids: list[int]) -> pd.DataFrame:
    """Merge the per-process manifests into `manifest.csv` once every expected image is present."""
    folder = cfg.paths.synthetic / name
    expected = {it.image_id for it in work_items(cfg.generate, source_ids, name)}
    frames = [r for f in [folder / "manifest.csv", *sorted(folder.glob(".manifest-*.csv"))]
              if (r := read_rows(f)) is not None]
    rows = pd.concat(frames).drop_duplicates("image_id")
    rows = rows[rows["image_id"].isin(expected) & rows["path"].map(lambda p: (folder / p).exists())]
    missing = expected - set(rows["image_id"])
    if missing:
        raise RuntimeError(f"generate {name}: {len(missing)} images missing (e.g. {sorted(missing)[:3]}); run again to "
                           "finish them")
    rows = rows.sort_values(["source_image_id", "index"]).reset_index(drop=True)
    write_csv(folder / "manifest.csv", rows[MANIFEST_COLUMNS])
    for f in folder.glob(".manifest-*.csv"):
        f.unlink()
    return rows


def seeded_mixes(emb, rows: np.ndarray, seeds: list[int], mode: str, mixing) -> torch.Tensor:
    """One MVC mix per (caption row, seed), each drawn from its own seed so that batching changes nothing."""
    from mvc.text import apply_mix, concat_plans, draw_mix

    plans = [draw_mix(emb.labels, rows[i: i + 1], mode, mixing.k, mixing.alpha, mixing.beta_max,
                      np.random.default_rng(s), mixing.include_anchor) for i, s in enumerate(seeds)]
    return apply_mix(emb.embeddings, concat_plans(plans))


def load_generation_models(cfg: StudyConfig, emb, device: str, dtype: torch.dtype = torch.float32,
                           naive: bool | None = None) -> dict:
    """{"mvc": (unet, vae, scheduler config, conditioning latents), "naive": (...)}, on `device`
    (the naive backbone when `naive`, by default when `generate.naive`)."""
    from mvc.finetune import encode_latents
    from mvc.models import backbone_source, diffusion_images, load_backbone

    out = {}
    mvc = load_backbone(cfg.paths.mvc_model, field="runs/<study>/mvc", dtype=dtype)
    vae = mvc.vae.to(device).eval()
    cond = encode_latents(vae, diffusion_images(cfg, emb.frame["image_id"].to_numpy()))
    out["mvc"] = (mvc.unet.to(device).eval(), vae, mvc.scheduler.config, cond)
    if cfg.generate.naive if naive is None else naive:
        bb = load_backbone(backbone_source(cfg), cfg.backbone.revision, dtype=dtype)
        out["naive"] = (bb.unet.to(device).eval(), bb.vae.to(device).eval(), bb.scheduler.config, None)
    return out


def generate_all(cfg: StudyConfig, show_progress: bool = True, max_batches: int | None = None) -> dict[str, pd.DataFrame]:
    """Stage `generate`: every generator's images for every training image, sharded over accelerate processes."""
    from accelerate import PartialState

    from mvc.data import load_splits
    from mvc.runtime import set_threads
    from mvc.text import load_caption_embeddings

    dist = PartialState(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
    outputs = [cfg.paths.synthetic]
    if dist.is_main_process:
        run = state.prepare(cfg, "generate", outputs)
    else:
        run = not state.is_done(cfg, "generate", outputs)
    dist.wait_for_everyone()
    names = generators(cfg.generate)
    if not run:
        return {n: load_manifest(cfg, n) for n in names}
    state.require(cfg, "finetune")
    start = time.time()
    set_threads()
    emb = load_caption_embeddings(cfg)
    splits = load_splits(cfg).set_index("image_id")
    emb.frame["class_name"] = splits.loc[emb.frame["image_id"], "class_name"].to_numpy()
    dtype = torch.bfloat16 if dist.device.type == "cuda" else torch.float32
    models = load_generation_models(cfg, emb, dist.device, dtype)
    for unet, *_ in models.values():
        if cfg.generate.channels_last:
            unet.to(memory_format=torch.channels_last)
        if cfg.generate.compile:
            unet.forward = torch.compile(unet.forward)
    made = {n: generate_set(cfg, n, models, emb, dist.process_index, dist.num_processes, show_progress and dist.is_main_process,
                            max_batches) for n in names}
    dist.wait_for_everyone()
    if max_batches is not None:
        return {}
    result = {}
    if dist.is_main_process:
        ids = emb.frame["image_id"].tolist()
        result = {n: finalize_set(cfg, n, ids) for n in names}
        state.mark_done(cfg, "generate", time.time() - start, {
            "world_size": dist.num_processes, "images": {n: len(r) for n, r in result.items()},
            "made_this_run": made, "device": str(dist.device)})
    dist.wait_for_everyone()
    return result


def load_manifest(cfg: StudyConfig, name: str) -> pd.DataFrame:
    state.require(cfg, "generate")
    return pd.read_csv(cfg.paths.synthetic / name / "manifest.csv")


def load_synthetic(cfg: StudyConfig, name: str, resolution: int | None = None,
                   sources: list[int] | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """A generator's images as uint8 (N, H, W, C) at the data resolution and channels, with the manifest
    (only those made from `sources`, when given)."""
    from mvc.data import to_array

    rows = load_manifest(cfg, name)
    if sources is not None:
        rows = rows[rows["source_image_id"].isin(sources)].reset_index(drop=True)
    folder = cfg.paths.synthetic / name
    res = resolution or cfg.data.resolution
    imgs = []
    for p in rows["path"]:
        with Image.open(folder / p) as im:
            imgs.append(to_array(im, res, cfg.data.channels))
    return (np.stack(imgs) if imgs else np.zeros((0, res, res, cfg.data.channels), np.uint8)), rows


def checkpoint_previews(cfg: StudyConfig, n_sources: int = 4, per_source: int = 4) -> list[tuple[str, list[np.ndarray]]]:
    """Rows for a grid: at each kept fine-tuning checkpoint and the final model, a conditioning image of a few
    classes followed by images generated from it (the study's first MVC mode and guidance)."""
    from safetensors.torch import load_file

    from mvc.finetune import list_checkpoints
    from mvc.models import diffusion_images, tensor_to_images
    from mvc.text import load_caption_embeddings

    g = cfg.generate
    emb = load_caption_embeddings(cfg)
    models = load_generation_models(cfg, emb, "cpu", naive=False)
    unet, vae, sched_cfg, cond = models["mvc"]
    final = {k: v.clone() for k, v in unet.state_dict().items()}
    rows_of = emb.frame.groupby("label").head(1).index.to_numpy()[:n_sources]
    real = tensor_to_images(diffusion_images(cfg, emb.frame["image_id"].to_numpy()[rows_of]))
    states = [(p.name.replace("checkpoint-", "step "), p / "model.safetensors") for p in list_checkpoints(cfg.paths.finetune_work / "checkpoints")]
    anchors = np.repeat(rows_of, per_source)
    seeds = [item_seed(g.seed + 7, g.modes[0], int(a), j) for a in rows_of for j in range(per_source)]
    text = seeded_mixes(emb, anchors, seeds, g.modes[0], g.mixing)
    out = []
    for label, weights in states + [("final", None)]:
        try:
            unet.load_state_dict(load_file(str(weights)) if weights else final)
        except (OSError, RuntimeError) as err:
            log.warning("preview: skipping %s (%s)", weights, err)
            continue
        x = sample(unet, vae, make_scheduler(g.scheduler, sched_cfg), initial_noise(seeds, tuple(cond.shape[1:])),
                   text, emb.empty, cond[anchors], g.steps,
                   g.guidance_text, g.guidance_image)
        imgs = tensor_to_images(x)
        for i in range(len(rows_of)):
            out.append((f"{label}", [real[i]] + list(imgs[i * per_source: (i + 1) * per_source])))
    return out
