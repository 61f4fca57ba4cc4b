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
from typing import Any

import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import ProjectConfiguration
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from mvc.artifacts import (
    backbone_source,
    list_checkpoints,
    trained_model,
    unit_needs_model,
)
from mvc.components import diffusion_loss, load_backbone, save_model, use_attention, widen_conv_in
from mvc.config import StudyConfig
from mvc.io import append_rows, read_rows, write_csv, write_json
from mvc.progress import progress
from mvc.registry import MODELS
from mvc.resources import check_memory
from mvc.runtime import effective_mixed_precision, make_optimizer, maybe_compile, on_cpu, release_memory
from mvc.state import stage
from mvc.training_batches import LoopState, TrainingData, make_batch, training_data

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint folder that cannot be resumed from."""


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
    fine-tuning in the same process starts from the memory the first one started from. A model that trains tokens
    (`FineTunedModel.trains`) is learnt by `mvc.textual_inversion.train_tokens` instead."""
    if MODELS[model].trains == "tokens":
        from mvc.textual_inversion import train_tokens

        return train_tokens(cfg, model, show_progress, max_steps)
    accelerator = _accelerator(cfg, cfg.paths.model_work(MODELS[model].stage))
    try:
        return _train(cfg, accelerator, model, show_progress, max_steps)
    finally:
        accelerator.free_memory()  # drops accelerate's references to the prepared model, optimizer and scheduler
        release_memory()


@dataclass
class Trainee:
    """What the loop updates: the (prepared) UNet, its optimizer and schedule, and EMA's copy with its home."""

    unet: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    ema: EMAModel | None
    ema_home: Any  # where EMA's float32 copy lives between updates


def _prepare(cfg: StudyConfig, accelerator, unet: torch.nn.Module, image_conditioned: bool) -> Trainee:
    """The UNet widened for the image condition (MVC's models), laid out and compiled as asked, with AdamW, the
    learning-rate schedule and EMA, through `accelerator.prepare` (DDP where several processes run)."""
    ft = cfg.finetune
    unet = widen_conv_in(unet) if image_conditioned else unet
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
    home = "cpu" if ft.ema_offload else accelerator.device
    if ema is not None:
        ema.to(home)
    return Trainee(unet, opt, sched, ema, home)


def _resume(accelerator, t: Trainee, loop: LoopState, checkpoints: Path, loss_file: Path, desc: str) -> None:
    """Register the loop's state and EMA for checkpointing, load the last checkpoint if there is one, and drop the
    loss rows logged after it (they will be logged again)."""
    accelerator.register_for_checkpointing(loop)
    if t.ema is not None:
        accelerator.register_for_checkpointing(t.ema)
    found = list_checkpoints(checkpoints)
    if found:
        _load_checkpoint(accelerator, found[-1])
        if t.ema is not None:
            t.ema.to(t.ema_home)
        log.info("%s: resumed from %s at step %d", desc, found[-1], loop.step)
    if accelerator.is_main_process:
        old = read_rows(loss_file)
        if old is not None and (old["step"] >= loop.step).any():
            write_csv(loss_file, old[old["step"] < loop.step])


def _optimizer_step(cfg: StudyConfig, accelerator, t: Trainee, scheduler, data: TrainingData, loop: LoopState,
                    per_device: int, model_name: str) -> torch.Tensor:
    """One optimizer step over `gradient_accumulation_steps` forward passes, then EMA's update; the last loss."""
    ft = cfg.finetune
    for micro in range(ft.gradient_accumulation_steps):
        with accelerator.accumulate(t.unet):
            rng, gen = loop.generators(micro)  # seeded by (seed, rank, step, micro) on every device
            latents, cond, text = (None if x is None else x.to(accelerator.device)
                                   for x in make_batch(data, cfg, rng, per_device, model_name))
            with accelerator.autocast():
                loss = diffusion_loss(t.unet, scheduler, latents, text, cond, gen)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(t.unet.parameters(), ft.max_grad_norm)
            t.opt.step()
            t.sched.step()
            t.opt.zero_grad(set_to_none=True)
    if t.ema is not None:  # after zero_grad freed the gradients: an offloaded copy visits the device here only
        t.ema.to(accelerator.device)
        t.ema.step(accelerator.unwrap_model(t.unet).parameters())
        t.ema.to(t.ema_home)
    return loss


def _train(cfg: StudyConfig, accelerator, model_name: str, show_progress: bool, max_steps: int | None) -> dict | None:
    """Fine-tune model `model_name` (resuming from its last checkpoint); its summary once every step is done, {}
    on the other processes, None when `max_steps` stopped it early."""
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
    t = _prepare(cfg, accelerator, use_attention(bb.unet, cfg), spec.image_conditioned)
    loop = LoopState(ft.seed, accelerator.process_index)
    _resume(accelerator, t, loop, checkpoints, loss_file, desc)
    rows = []
    bar = progress(total=ft.steps, initial=loop.step, desc=desc,
                   disable=not (show_progress and accelerator.is_main_process))
    while loop.step < ft.steps and (max_steps is None or loop.step < max_steps):
        loss = _optimizer_step(cfg, accelerator, t, bb.scheduler, data, loop, per_device, model_name)
        loop.step += 1
        bar.update(1)
        per_process = accelerator.gather(loss.detach().float()[None]).cpu()  # (processes,)
        rows.append({"step": loop.step - 1, "loss": per_process.mean().item(), "lr": t.sched.get_last_lr()[0],
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
    model = accelerator.unwrap_model(t.unet)
    if t.ema is not None:
        t.ema.copy_to(model.parameters())
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
