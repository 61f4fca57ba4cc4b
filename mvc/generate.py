"""Stage `generate` (the paper's Figure 4): the synthetic sets of `mvc.registry.SETS`.

For every labelled training image (the source) and index `j < M`, one image per synthetic set, drawn by the sampler
its declaration names (`mvc.samplers`): `conditioned` (`mvc_<mode>`: the fine-tuned model, conditioned on the
source's latent and an MVC mix of its class's captions, two guidance scales), `text` (`sd_naive`: the backbone
before fine-tuning, text only, the same mixed prompt and noise as the first MVC set) or `sdedit` (`sd_img2img`),
each batch handed to it as a `SampleBatch`. Every unit of
the study (shots level x replicate) gets its own sets. Work items are sharded across accelerate
processes; every image is written atomically and then listed in its process's manifest, so a
killed run, started again, ends with exactly the expected set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from safetensors.torch import load_file

from mvc.artifacts import (
    DiffusionImages,
    backbone_source,
    diffusion_images,
    list_checkpoints,
    load_caption_embeddings,
    load_manifests,
    load_splits,
    model_path,
    unit_set_names,
)
from mvc.components import encode_latents, load_backbone, use_attention
from mvc.config import StudyConfig
from mvc.imaging import tensor_to_images
from mvc.io import append_rows, atomic_path, read_rows, write_csv
from mvc.mixing import seeded_mixes
from mvc.progress import progress
from mvc.registry import (
    MODELS,
    models_of_sets,
    mvc_set_names,
    set_guidance,
    set_images_per_source,
    set_mode,
    set_spec,
)
from mvc.runtime import maybe_compile, pick_device, process_state, release_memory, run_in_dtype, sampling_dtype
from mvc.samplers import SampleBatch
from mvc.sampling import initial_noise, make_scheduler, sample
from mvc.state import stage

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["image_id", "source_image_id", "index", "label", "mode", "seed", "path"]


@dataclass(frozen=True)
class WorkItem:
    """One image to make: synthetic set, source image, index j < M, seed."""

    set_name: str
    source_image_id: int
    index: int
    seed: int

    @property
    def image_id(self) -> str:
        return f"{self.set_name}-{self.source_image_id}-{self.index}"


def item_seed(base: int, mode: str, source: int, index: int) -> int:
    """A seed per (mode, source, index): the naive set shares it with the MVC set of its mode."""
    key = sum(ord(ch) * 31 ** i for i, ch in enumerate(mode)) % 2**31
    return int(np.random.SeedSequence([base, key, source, index]).generate_state(1)[0] % 2**31)


def work_items(g, source_ids: list[int], name: str) -> list[WorkItem]:
    """Every image of synthetic set `name`: M per source image (its declaration's M, else generate's)."""
    mode = set_mode(g, name)
    return [WorkItem(name, int(s), j, item_seed(g.seed, mode, int(s), j))
            for s in source_ids for j in range(set_images_per_source(g, name))]


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


def mixes_of(emb, rows: np.ndarray, seeds: list[int], mode: str, mixing) -> torch.Tensor:
    """The study's text conditions for caption `rows`, one seeded mix each, with `generate.mixing`'s settings."""
    return seeded_mixes(emb.embeddings, emb.labels, rows, seeds, mode, mixing.k, mixing.alpha, mixing.beta_max,
                        mixing.include_anchor)


def latent_shape(cfg: StudyConfig, unet, vae) -> tuple[int, int, int]:
    """(C, h, w) of the latents of `backbone.resolution` images (SD 1.5 at 256 px: 4 x 32 x 32, not its default
    sample size of 64)."""
    side = cfg.backbone.resolution // 2 ** (len(vae.config.block_out_channels) - 1)
    return unet.config.out_channels, side, side


def pool_partners(cfg: StudyConfig, frame: pd.DataFrame, m: int) -> dict[tuple[int, int], int]:
    """{(source image, j < m): a pool image of the source's class}: the class's pool in a permutation seeded by
    (generate.seed, class), walked source by source, so that no pool image is drawn twice before every one of the
    class is drawn once (the oracle sets)."""
    splits = load_splits(cfg)
    pool = splits[splits["split"] == "pool"]
    out = {}
    for label, sources in frame.groupby("label")["image_id"]:
        ids = np.sort(pool.loc[pool["label"] == label, "image_id"].to_numpy())
        if len(ids) == 0:
            raise ValueError(f"the oracle sets draw real pool images of each class, but the pool of study "
                             f"{cfg.study!r} has none of class {label}: raise data.pool_per_class, or leave the "
                             "oracle sets out of generate.sets")
        ids = np.random.default_rng([cfg.generate.seed, int(label)]).permutation(ids)
        for rank, source in enumerate(sorted(int(s) for s in sources)):
            out.update({(source, j): int(ids[(rank * m + j) % len(ids)]) for j in range(m)})
    return out


def generate_set(cfg: StudyConfig, name: str, models: dict, emb, rank: int = 0, world: int = 1,
                 show_progress: bool = True, max_batches: int | None = None) -> int:
    """Generate this process's missing images of synthetic set `name`; returns how many it made."""
    g = cfg.generate
    folder = cfg.paths.synthetic / name
    items = shard(work_items(g, emb.frame["image_id"].tolist(), name), rank, world)
    done = _done_ids(folder)
    todo = [it for it in items if it.image_id not in done]
    if not todo:
        return 0
    mode, spec = set_mode(g, name), set_spec(name)[0]
    sampler = spec.draws
    s_text, s_image = set_guidance(g, name)
    unet, vae, sched_cfg, cond_latents = models[spec.model]
    scheduler = make_scheduler(sampler.scheduler or g.scheduler, sched_cfg)
    steps, shape, pipeline = sampler.steps or g.steps, latent_shape(cfg, unet, vae), models.get(("img2img", spec.model))
    label_of = dict(zip(emb.frame["image_id"], emb.frame["label"]))
    class_of = dict(zip(emb.frame["label"], emb.frame.get("class_name", emb.frame["label"])))
    partner = pool_partners(cfg, emb.frame, set_images_per_source(g, name)) if sampler.pool else {}
    manifest = folder / f".manifest-{rank}.csv"
    made = 0
    bar = progress(total=len(todo), desc=f"generate {name}" + (f" {cfg.unit_name}" if cfg.unit_name else ""),
                   unit="img", disable=not show_progress)
    for n, lo in enumerate(range(0, len(todo), g.batch_size)):
        if max_batches is not None and n >= max_batches:
            break
        batch = todo[lo: lo + g.batch_size]
        ids = [it.source_image_id for it in batch]
        seeds = [it.seed for it in batch]
        rows = emb.row_of(np.array(ids))
        images = sampler.draw(SampleBatch(
            source_ids=ids, seeds=seeds, mode=mode, unet=unet, vae=vae, scheduler=scheduler,
            steps=steps, s_text=s_text, s_image=s_image, latent_shape=shape,
            empty=emb.empty, text=lambda rows=rows, seeds=seeds: mixes_of(emb, rows, seeds, mode, g.mixing),
            condition=None if cond_latents is None else (lambda rows=rows: cond_latents[rows]),
            sources=lambda ids=ids: tensor_to_images(diffusion_images(cfg, ids)),
            prompts=[cfg.data.prompt_template.format(name=class_of[label_of[i]]) for i in ids],
            pipeline=pipeline, strength=g.img2img_strength, labels=[int(label_of[i]) for i in ids],
            template=cfg.data.prompt_template, strengths=tuple(sampler.strengths(g) if sampler.strengths else ()),
            partners=lambda batch=batch: diffusion_images(
                cfg, [partner[(it.source_image_id, it.index)] for it in batch])))
        records = []
        for it, img in zip(batch, images):
            rel = f"{class_of[label_of[it.source_image_id]]}/{it.image_id}.png"
            target = folder / rel
            with atomic_path(target) as tmp:
                Image.fromarray(img).save(tmp, format="PNG")
            records.append({"image_id": it.image_id, "source_image_id": it.source_image_id, "index": it.index,
                            "label": label_of[it.source_image_id], "mode": mode,
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


class ConditionLatents:
    """e_I of the labelled images, computed as fine-tuning computes them (the float32 VAE's posterior mode, on the
    VAE's device), each when first asked for and then kept: a preview encodes only the images it shows."""

    def __init__(self, cfg: StudyConfig, vae, image_ids):
        self.cfg, self.vae, self.ids, self.done = cfg, vae, np.asarray(image_ids), {}

    def __getitem__(self, rows) -> torch.Tensor:
        rows = [int(r) for r in np.atleast_1d(np.asarray(rows))]
        missing = sorted(set(rows) - self.done.keys())
        if missing:
            self.done.update(zip(missing, encode_latents(self.vae, DiffusionImages(self.cfg, self.ids[missing]))))
        return torch.stack([self.done[r] for r in rows])


def load_generation_models(cfg: StudyConfig, emb, device: str, dtype: torch.dtype = torch.float32,
                           sets: list[str] | None = None) -> dict:
    """{model: (unet, vae, scheduler config, conditioning latents)} for every model the synthetic sets `sets` (by
    default this unit's) are sampled from: "backbone" and the fine-tuned models of `mvc.registry.MODELS`, on
    `device`; and {("img2img", model): img2img pipeline} for the sets whose sampler draws through one (sharing that
    model's UNet).

    Only the UNets run in `dtype` (bf16 on a GPU), called with and returning float32 (`run_in_dtype`); the VAEs
    and the text encoder stay in float32, so conditioning latents equal those fine-tuning trained with, and every
    set's latents and sampler arithmetic are float32. Fine-tuning never changes the VAE, so the image-conditioned
    models share one set of conditioning latents."""
    sets = unit_set_names(cfg) if sets is None else sets
    out: dict = {}
    cond = None
    for name in models_of_sets(sets):
        path = backbone_source(cfg) if name == "backbone" else model_path(cfg, name)
        field = "backbone.model" if name == "backbone" else f"runs/<study>/{name}"
        bb = load_backbone(path, cfg.backbone.revision if name == "backbone" else None, field=field, unet_dtype=dtype)
        bb.unet = run_in_dtype(use_attention(bb.unet, cfg).to(device).eval())
        bb.vae = bb.vae.to(device).eval()
        conditioned = name != "backbone" and MODELS[name].image_conditioned
        if conditioned and cond is None:
            cond = ConditionLatents(cfg, bb.vae, emb.frame["image_id"].to_numpy())
        out[name] = (bb.unet, bb.vae, bb.scheduler.config, cond if conditioned else None)
        if any(set_spec(s)[0].draws.img2img and set_spec(s)[0].model == name for s in sets):
            out[("img2img", name)] = img2img_pipeline(bb, cfg.generate.scheduler, device)
    return out


def img2img_pipeline(bb, scheduler: str, device):
    """diffusers' StableDiffusionImg2ImgPipeline over the backbone's five parts (no fine-tuning)."""
    from diffusers import StableDiffusionImg2ImgPipeline  # deferred: diffusers' import takes seconds
    pipe = StableDiffusionImg2ImgPipeline(vae=bb.vae, text_encoder=bb.text_encoder, tokenizer=bb.tokenizer,
                                          unet=bb.unet, scheduler=make_scheduler(scheduler, bb.scheduler.config),
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)  # the UNet keeps its dtype and casting hooks; VAE and text encoder stay float32


@stage("generate", reader=load_manifests, distributed=True)
def generate_all(cfg: StudyConfig, show_progress: bool = True, max_batches: int | None = None) -> dict | None:
    """Every synthetic set's images for every training image of every unit (shots level x replicate, the main
    one first), sharded over accelerate processes."""
    dist = process_state(cfg.device)
    summary = {}
    for unit in cfg.units():
        out = generate_unit(unit, dist, show_progress, max_batches)
        release_memory()  # this unit's models go before the next unit's load
        if out is None:
            return None
        summary = summary or out  # the main unit's
    if not dist.is_main_process:
        return {}
    save_previews(cfg)
    return {**summary, "units": len(cfg.units())}


def preview_figure(cfg: StudyConfig, n_sources: int = 3, per_source: int = 4):
    """`checkpoint_previews` as one image grid (notebook 03; the report's `finetune_samples`)."""
    from mvc import figures  # deferred: matplotlib is needed only here

    return figures.image_grid(checkpoint_previews(cfg, n_sources, per_source))


def save_previews(cfg: StudyConfig) -> None:
    """The report's `finetune_samples` figure, drawn once the main unit's model and checkpoints are final."""
    import matplotlib.pyplot as plt

    fig = preview_figure(cfg)
    with atomic_path(cfg.paths.finetune_previews) as tmp:
        fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    release_memory()


def generate_unit(cfg: StudyConfig, dist, show_progress: bool = True, max_batches: int | None = None) -> dict | None:
    """The synthetic sets of one unit (`cfg.unit(shots, replicate)`, or the study itself)."""
    names = unit_set_names(cfg)
    if all((cfg.paths.synthetic / n / "manifest.csv").exists() for n in names):  # a unit finished earlier
        return {"images": {n: len(read_rows(cfg.paths.synthetic / n / "manifest.csv")) for n in names}}
    emb = load_caption_embeddings(cfg)
    splits = load_splits(cfg).set_index("image_id")
    emb.frame["class_name"] = splits.loc[emb.frame["image_id"], "class_name"].to_numpy()
    ids = emb.frame["image_id"].tolist()
    dtype = sampling_dtype(dist.device, cfg.generate.cpu_precision)
    made = {}
    for model in models_of_sets(names):  # one model in memory at a time: its sets, then the next model's
        sets = [n for n in names if set_spec(n)[0].model == model]
        models = load_generation_models(cfg, emb, dist.device, dtype, sets=sets)
        for unet, *_ in (v for k, v in models.items() if isinstance(k, str)):  # a pipeline shares its model's UNet
            if cfg.generate.channels_last:
                unet.to(memory_format=torch.channels_last)
            maybe_compile(unet, cfg.generate.compile, dist.device, "generate.compile")
        made.update({n: generate_set(cfg, n, models, emb, dist.process_index, dist.num_processes,
                                     show_progress and dist.is_main_process, max_batches) for n in sets})
        del models
        release_memory()
    dist.wait_for_everyone()
    if max_batches is not None:
        return None
    if not dist.is_main_process:
        dist.wait_for_everyone()
        return {}
    result = {n: finalize_set(cfg, n, ids) for n in names}
    dist.wait_for_everyone()  # every process sees the finished manifests before the next unit
    return {"world_size": dist.num_processes, "images": {n: len(r) for n, r in result.items()},
            "made_this_run": made, "device": str(dist.device)}


def checkpoint_previews(cfg: StudyConfig, n_sources: int = 4,
                        per_source: int = 4) -> list[tuple[str, list[np.ndarray]]]:
    """Rows for a grid: at each kept fine-tuning checkpoint and the final model, a conditioning image of a few
    classes followed by images generated from it (the study's first MVC mode and guidance)."""
    g = cfg.generate
    emb = load_caption_embeddings(cfg)
    device = pick_device(cfg.device)
    dtype = sampling_dtype(device, cfg.generate.cpu_precision)
    unet, vae, sched_cfg, cond = load_generation_models(cfg, emb, device, dtype,
                                                        sets=list(mvc_set_names(g.modes[:1])))["mvc"]
    final = {k: v.clone() for k, v in unet.state_dict().items()}
    rows_of = emb.frame.groupby("label").head(1).index.to_numpy()[:n_sources]
    real = tensor_to_images(diffusion_images(cfg, emb.frame["image_id"].to_numpy()[rows_of]))
    states = [(p.name.replace("checkpoint-", "step "),
               p / "model.safetensors") for p in list_checkpoints(cfg.paths.checkpoints)]
    anchors = np.repeat(rows_of, per_source)
    seeds = [item_seed(g.seed + 7, g.modes[0], int(a), j) for a in rows_of for j in range(per_source)]
    text = mixes_of(emb, anchors, seeds, g.modes[0], g.mixing)
    out = []
    for label, weights in states + [("final", None)]:
        try:
            unet.load_state_dict(load_file(str(weights)) if weights else final)
        except (OSError, RuntimeError) as err:
            log.warning("preview: skipping %s (%s)", weights, err)
            continue
        x = sample(unet, vae, make_scheduler(g.scheduler, sched_cfg),
                   initial_noise(seeds, latent_shape(cfg, unet, vae)),
                   text, emb.empty, cond[anchors], steps=g.steps, s_text=g.guidance_text, s_image=g.guidance_image)
        imgs = tensor_to_images(x)
        for i in range(len(rows_of)):
            out.append((f"{label}", [real[i]] + list(imgs[i * per_source: (i + 1) * per_source])))
    return out
