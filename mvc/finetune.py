"""MVC fine-tuning (the paper's Figure 3) under accelerate: DDP, mixed precision, accumulation, checkpoints.

Per sample: target image `x` of class `y`; `z_0 = s * E(x)`; a conditioning image `x_c` of the same class
(another one by default) whose unscaled latent mode `e_I` is concatenated to `z_t`; text `e_T` an MVC mix
over the class's captions that always includes the target's own; conditioning dropout for classifier-free
guidance. VAE latents and caption embeddings are computed once, before the loop.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import diffusers
import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import ProjectConfiguration
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from mvc.artifacts import (
    DiffusionImages,
    backbone_source,
    list_checkpoints,
    load_caption_embeddings,
    trained_model,
    unit_needs_model,
)
from mvc.components import diffusion_loss, encode_latents, load_backbone, widen_conv_in
from mvc.config import StudyConfig
from mvc.io import append_rows, atomic_dir, read_rows, write_csv, write_json
from mvc.mixing import MixPlan, apply_mix, draw_mix, same_class_draws
from mvc.progress import progress
from mvc.registry import MODELS
from mvc.resources import check_memory
from mvc.runtime import effective_mixed_precision, make_optimizer, maybe_compile, on_cpu, release_memory
from mvc.state import stage

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint folder that cannot be resumed from."""


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


def _load_checkpoint(accelerator, path: Path) -> None:
    try:
        accelerator.load_state(str(path))
    except Exception as err:  # noqa: BLE001 - any unreadable file in it means the same to the user
        raise CheckpointError(
            f"finetune: checkpoint {path} cannot be resumed from ({type(err).__name__}: {err}). Delete that folder "
            f"to resume from the one before, or delete {path.parent} to start over.") from err


def _accelerator(cfg: StudyConfig, work: Path):
    """An Accelerator for this run's precision and accumulation (on a CPU-only machine: DDP over gloo)."""
    ft = cfg.finetune
    cpu = on_cpu(cfg.device)
    precision = effective_mixed_precision(ft.mixed_precision, "cpu" if cpu else "cuda")
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != precision:
        AcceleratorState._reset_state()  # an earlier stage in this process set other options; the processes stay
    return Accelerator(mixed_precision=precision, gradient_accumulation_steps=ft.gradient_accumulation_steps,
                       project_config=ProjectConfiguration(project_dir=str(work)), cpu=cpu)


def per_process_batch(batch_size: int, processes: int) -> int:
    """`finetune.batch_size` split over the processes; refused where the split would change the total."""
    if batch_size % processes:
        raise ValueError(f"finetune.batch_size={batch_size} cannot be split evenly over {processes} processes "
                         f"(the effective batch would become {max(1, batch_size // processes) * processes}); "
                         f"set it to a multiple of {processes}")
    return batch_size // processes


def model_stage_function(name: str):
    """The stage that fine-tunes model `name` (`mvc.registry.MODELS`) for every unit that needs it."""
    model = MODELS[name]

    @stage(model.stage, reader=lambda cfg: trained_model(cfg, name), distributed=True)
    def run(cfg: StudyConfig, show_progress: bool = True, max_steps: int | None = None) -> dict | None:
        if not any(unit_needs_model(u, name) for u in cfg.units()):
            return {"skipped": f"no synthetic set of this study is sampled from {name} (generate.sets)"}
        return train_units(cfg, name, show_progress, max_steps)

    run.__name__ = run.__qualname__ = model.stage
    run.__doc__ = (f"Stage `{model.stage}`: {model.summary}. Every unit of the study (shots level x replicate, "
                   f"`cfg.units()`) that needs it gets its own model, the main one first; a unit whose model is saved "
                   f"is done, and an interrupted one resumes from the newest checkpoint of its work folder. "
                   f"`max_steps` stops early without saving (tests use it to simulate an interruption).")
    return run


# one stage per fine-tuned model of the registry; `finetune` is MVC's
MODEL_STAGES = {m.stage: model_stage_function(m.name) for m in MODELS.values()}
finetune = MODEL_STAGES["finetune"]


def finetune_model(cfg: StudyConfig, name: str, **kwargs) -> Path | None:
    """Run the stage of fine-tuned model `name` (e.g. `sd_finetuned`); its folder, or None if the study has none."""
    return MODEL_STAGES[MODELS[name].stage](cfg, **kwargs)


def train_units(cfg: StudyConfig, name: str, show_progress: bool = True, max_steps: int | None = None) -> dict | None:
    """`train` for every unit that needs model `name` and has not saved it yet; the main unit's summary, with how
    many units."""
    stage_name = MODELS[name].stage
    for unit in cfg.units():
        if not unit_needs_model(unit, name):
            continue  # a level whose methods (`curve_methods`) draw from no set of this model
        if not unit.paths.model(name, stage_name).exists() and train(unit, name, show_progress, max_steps) is None:
            return None
    summary = cfg.paths.model_work(stage_name) / "summary.json"
    return {**(json.loads(summary.read_text()) if summary.exists() else {}), "units": len(cfg.units())}


def train(cfg: StudyConfig, model: str = "mvc", show_progress: bool = True,
          max_steps: int | None = None) -> dict | None:
    """The fine-tuning loop of every model of `mvc.registry.MODELS`: MVC's, the text-only baseline's, the
    no-mixing ablation's.
    Everything it built (accelerator, models, optimizer, EMA) is released when it returns, so that the next unit's
    fine-tuning in the same process starts from the memory the first one started from."""
    accelerator = _accelerator(cfg, cfg.paths.model_work(MODELS[model].stage))
    try:
        return _train(cfg, accelerator, model, show_progress, max_steps)
    finally:
        accelerator.free_memory()  # drops accelerate's references to the prepared model, optimizer and scheduler
        release_memory()


def _train(cfg: StudyConfig, accelerator, model_name: str, show_progress: bool, max_steps: int | None) -> dict | None:
    ft, spec = cfg.finetune, MODELS[model_name]
    out, work = cfg.paths.model(model_name, spec.stage), cfg.paths.model_work(spec.stage)
    checkpoints, loss_file = work / "checkpoints", work / "loss.csv"
    desc = spec.stage + (f" {cfg.unit_name}" if cfg.unit_name else "")
    if cfg.backbone.kind == "surrogate" and on_cpu(cfg.device):
        check_memory(cfg, "finetune")
    per_device = per_process_batch(ft.batch_size, accelerator.num_processes)
    torch.manual_seed(ft.seed)
    bb = load_backbone(backbone_source(cfg), cfg.backbone.revision)
    vae = bb.vae.to(accelerator.device).requires_grad_(False).eval()
    data = training_data(cfg, vae)
    vae.to("cpu")  # latents are cached: the VAE leaves the device for the loop (it is saved with the model)
    unet = widen_conv_in(bb.unet) if spec.image_conditioned else bb.unet
    if ft.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if ft.channels_last:
        unet.to(memory_format=torch.channels_last)
    unet.train()
    unet = maybe_compile(unet, ft.compile, accelerator.device, "finetune.compile")  # the bare UNet, before DDP wraps it
    opt = make_optimizer(ft.optimizer, unet.parameters(), accelerator.device, lr=ft.learning_rate, weight_decay=1e-2)
    sched = get_scheduler(ft.lr_scheduler, opt, num_warmup_steps=ft.lr_warmup_steps * accelerator.num_processes,
                          num_training_steps=ft.steps * accelerator.num_processes)
    unet, opt, sched = accelerator.prepare(unet, opt, sched)
    ema = EMAModel(accelerator.unwrap_model(unet).parameters(), decay=ft.ema_decay) if ft.use_ema else None
    ema_home = "cpu" if ft.ema_offload else accelerator.device  # where EMA's float32 copy lives between updates
    if ema is not None:
        ema.to(ema_home)
    loop = LoopState(ft.seed, accelerator.process_index)
    accelerator.register_for_checkpointing(loop)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    found = list_checkpoints(checkpoints)
    if found:
        _load_checkpoint(accelerator, found[-1])
        if ema is not None:
            ema.to(ema_home)
        log.info("%s: resumed from %s at step %d", desc, found[-1], loop.step)
    if accelerator.is_main_process:
        old = read_rows(loss_file)
        if old is not None and (old["step"] >= loop.step).any():  # rows logged after the checkpoint
            write_csv(loss_file, old[old["step"] < loop.step])
    rows = []
    bar = progress(total=ft.steps, initial=loop.step, desc=desc,
                   disable=not (show_progress and accelerator.is_main_process))
    while loop.step < ft.steps and (max_steps is None or loop.step < max_steps):
        for micro in range(ft.gradient_accumulation_steps):
            with accelerator.accumulate(unet):
                rng, gen = loop.generators(micro)  # seeded by (seed, rank, step, micro) on every device
                latents, cond, text = (None if t is None else t.to(accelerator.device)
                                       for t in make_batch(data, cfg, rng, per_device, model_name))
                with accelerator.autocast():
                    loss = diffusion_loss(unet, bb.scheduler, latents, text, cond, gen)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(unet.parameters(), ft.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
        if ema is not None:  # after zero_grad freed the gradients: an offloaded copy visits the device here only
            ema.to(accelerator.device)
            ema.step(accelerator.unwrap_model(unet).parameters())
            ema.to(ema_home)
        loop.step += 1
        bar.update(1)
        per_process = accelerator.gather(loss.detach().float()[None]).cpu()  # (processes,)
        rows.append({"step": loop.step - 1, "loss": per_process.mean().item(), "lr": sched.get_last_lr()[0],
                     "loss_per_process": " ".join(f"{v:.6f}" for v in per_process.tolist())})
        if loop.step % ft.checkpoint_every == 0 or loop.step == ft.steps:
            if accelerator.is_main_process:
                append_rows(loss_file, pd.DataFrame(rows))
            rows = []
            _save_checkpoint(accelerator, checkpoints, loop.step, ft.checkpoints_total_limit)
    bar.close()
    if loop.step < ft.steps:
        return None
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return {}
    model = accelerator.unwrap_model(unet)
    if ema is not None:
        ema.copy_to(model.parameters())
    losses = read_rows(loss_file)
    summary = {"world_size": accelerator.num_processes, "steps": loop.step,
               "final_loss": float(losses["loss"].tail(20).mean()), "device": str(accelerator.device),
               "mixed_precision": accelerator.mixed_precision, "shots": cfg.shots_now, "replicate": cfg.replicate,
               "seed": ft.seed}
    write_json(work / "summary.json", summary)
    save_model(bb, model.eval(), out, spec.pipeline)  # last: a saved model marks the unit done
    return summary


def _save_checkpoint(accelerator, folder: Path, step: int, keep: int) -> None:
    """An accelerate checkpoint, written under a temporary name and renamed, keeping the newest `keep`."""
    target = folder / f"checkpoint-{step}"
    tmp = folder / f".tmp-checkpoint-{step}"
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # every process writes its own RNG state; the main one the rest
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        for old in list_checkpoints(folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def save_model(bb, unet, folder: Path, pipeline: str) -> None:
    """A folder that diffusers' `pipeline` class loads with `from_pretrained` (the model's `FineTunedModel.pipeline`:
    `StableDiffusionInstructPix2PixPipeline` for the image-conditioned models, `StableDiffusionPipeline` else)."""
    pipe = getattr(diffusers, pipeline)(vae=bb.vae, text_encoder=bb.text_encoder, tokenizer=bb.tokenizer, unet=unet,
                                        scheduler=bb.scheduler,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    with atomic_dir(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)


# ----------------------------------------------------------------------------------------------------------
# Looking inside (notebook 03)


def example_batch(cfg: StudyConfig, n: int = 6, seed: int = 0) -> pd.DataFrame:
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

