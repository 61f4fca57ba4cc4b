"""MVC fine-tuning (the paper's Figure 3) under accelerate: DDP, mixed precision, accumulation, checkpoints.

Per sample: target image `x` of class `y`; `z_0 = s * E(x)`; a conditioning image `x_c` of the same class
(another one by default) whose unscaled latent mode `e_I` is concatenated to `z_t`; text `e_T` an MVC mix
over the class's captions that always includes the target's own; conditioning dropout for classifier-free
guidance. VAE latents and caption embeddings are computed once, before the loop.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from mvc import state
from mvc.config import StudyConfig
from mvc.io import append_rows, atomic_dir, read_rows, write_csv

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

    def same_class_partner(self, idx: np.ndarray, mode: str, rng: np.random.Generator) -> np.ndarray:
        """The conditioning image of each target: itself (`same`) or another image of its class (`other`)."""
        if mode == "same":
            return idx
        from mvc.text import same_class_draws

        return same_class_draws(self.labels, idx, 1, rng, exclude_anchor=True)[:, 0]


def encode_latents(vae, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Latent modes (unscaled) of images in [-1, 1], in batches, without gradients."""
    with torch.no_grad():
        return torch.cat([vae.encode(images[i: i + batch_size].to(vae.device, vae.dtype)).latent_dist.mode().float().cpu()
                          for i in range(0, len(images), batch_size)])


def training_data(cfg: StudyConfig, vae) -> TrainingData:
    from mvc.models import diffusion_images
    from mvc.text import load_caption_embeddings

    emb = load_caption_embeddings(cfg)
    ids = emb.frame["image_id"].to_numpy()
    modes = encode_latents(vae, diffusion_images(cfg, ids))
    return TrainingData(latents=modes * vae.config.scaling_factor, cond_latents=modes, labels=emb.labels,
                        embeddings=emb.embeddings, empty=emb.empty)


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


def make_batch(data: TrainingData, cfg: StudyConfig, rng: np.random.Generator, batch_size: int):
    """One batch: target latents, conditioning latents, MVC-mixed text, with conditioning dropout applied."""
    from mvc.text import apply_mix, draw_mix

    ft = cfg.finetune
    idx = rng.integers(0, len(data.labels), batch_size)
    partner = data.same_class_partner(idx, ft.cond_image, rng)
    m = ft.mixing
    plan = draw_mix(data.labels, idx, m.mode, m.k, m.alpha, m.beta_max, rng, include_anchor=True)
    text = apply_mix(data.embeddings, plan)
    cond = data.cond_latents[partner].clone()
    r = rng.random(batch_size)  # [0, dt): text only; [dt, dt+di): image only; [dt+di, dt+di+db): both
    both = (r >= ft.drop_text + ft.drop_image) & (r < ft.drop_text + ft.drop_image + ft.drop_both)
    drop_text = (r < ft.drop_text) | both
    drop_image = ((r >= ft.drop_text) & (r < ft.drop_text + ft.drop_image)) | both
    text[torch.from_numpy(drop_text)] = data.empty
    cond[torch.from_numpy(drop_image)] = 0
    return data.latents[idx], cond, text


def list_checkpoints(folder: Path) -> list[Path]:
    found = [p for p in folder.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _load_checkpoint(accelerator, path: Path) -> None:
    try:
        accelerator.load_state(str(path))
    except Exception as err:  # noqa: BLE001 - any unreadable file in it means the same to the user
        raise CheckpointError(
            f"finetune: checkpoint {path} cannot be resumed from ({type(err).__name__}: {err}). Delete that folder "
            f"to resume from the one before, or delete {path.parent} to start over.") from err


def finetune(cfg: StudyConfig, show_progress: bool = True, max_steps: int | None = None) -> Path:
    """Stage `finetune`: widen the backbone's UNet and train it with MVC conditioning; save `runs/<study>/mvc/`.

    Resumes from the newest checkpoint in `runs/<study>/finetune/`. `max_steps` stops early without saving
    the final model (tests use it to simulate an interruption).
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from mvc.models import backbone_source, diffusion_loss, load_backbone, widen_conv_in
    from mvc.runtime import set_threads

    ft, paths = cfg.finetune, cfg.paths
    work, ckpt_dir = paths.finetune_work, paths.finetune_work / "checkpoints"
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != ft.mixed_precision:
        AcceleratorState._reset_state()  # an earlier stage in this process set other options; the processes stay
    accelerator = Accelerator(mixed_precision=ft.mixed_precision, gradient_accumulation_steps=ft.gradient_accumulation_steps,
                              project_config=ProjectConfiguration(project_dir=str(work)),
                              cpu=cfg.device == "cpu" or not torch.cuda.is_available())  # CPU-only: DDP over gloo
    outputs = [paths.mvc_model, work]
    if accelerator.is_main_process:
        run = state.prepare(cfg, "finetune", outputs)
    else:
        run = not state.is_done(cfg, "finetune", outputs)
    accelerator.wait_for_everyone()
    if not run:
        return paths.mvc_model
    state.require(cfg, "backbone")
    start = time.time()
    set_threads()
    torch.manual_seed(ft.seed)
    bb = load_backbone(backbone_source(cfg), cfg.backbone.revision)
    vae = bb.vae.to(accelerator.device).requires_grad_(False).eval()
    data = training_data(cfg, vae)
    unet = widen_conv_in(bb.unet)
    if ft.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if ft.channels_last:
        unet.to(memory_format=torch.channels_last)
    unet.train()
    fused = accelerator.device.type == "cuda"  # one fused kernel for the whole AdamW update
    opt = torch.optim.AdamW(unet.parameters(), lr=ft.learning_rate, weight_decay=1e-2, fused=fused)
    sched = get_scheduler(ft.lr_scheduler, opt, num_warmup_steps=ft.lr_warmup_steps * accelerator.num_processes,
                          num_training_steps=ft.steps * accelerator.num_processes)
    unet, opt, sched = accelerator.prepare(unet, opt, sched)
    if ft.compile:
        unet.forward = torch.compile(unet.forward)
    ema = EMAModel(accelerator.unwrap_model(unet).parameters(), decay=ft.ema_decay) if ft.use_ema else None
    loop = LoopState(ft.seed, accelerator.process_index)
    accelerator.register_for_checkpointing(loop)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    found = list_checkpoints(ckpt_dir)
    if found:
        _load_checkpoint(accelerator, found[-1])
        log.info("finetune: resumed from %s at step %d", found[-1], loop.step)
    loss_csv = work / "loss.csv"
    if accelerator.is_main_process:
        old = read_rows(loss_csv)
        if old is not None and (old["step"] >= loop.step).any():  # rows logged after the checkpoint
            write_csv(loss_csv, old[old["step"] < loop.step])
    per_device = max(1, ft.batch_size // accelerator.num_processes)
    noise_sched = bb.scheduler
    rows = []
    bar = tqdm(total=ft.steps, initial=loop.step, desc="finetune", disable=not (show_progress and accelerator.is_main_process))
    while loop.step < ft.steps and (max_steps is None or loop.step < max_steps):
        for micro in range(ft.gradient_accumulation_steps):
            with accelerator.accumulate(unet):
                rng, gen = loop.generators(micro)
                latents, cond, text = (t.to(accelerator.device) for t in make_batch(data, cfg, rng, per_device))
                gen = gen if accelerator.device.type == "cpu" else None
                with accelerator.autocast():
                    loss = diffusion_loss(unet, noise_sched, latents, text, cond, gen)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(unet.parameters(), ft.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(accelerator.unwrap_model(unet).parameters())
        loop.step += 1
        bar.update(1)
        rows.append({"step": loop.step - 1, "loss": accelerator.gather(loss.detach()[None]).mean().item(),
                     "lr": sched.get_last_lr()[0]})
        if loop.step % ft.checkpoint_every == 0 or loop.step == ft.steps:
            if accelerator.is_main_process:
                append_rows(loss_csv, pd.DataFrame(rows))
            rows = []
            _save_checkpoint(accelerator, ckpt_dir, loop.step, ft.checkpoints_total_limit)
    bar.close()
    if loop.step < ft.steps:
        return paths.mvc_model
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(unet)
        if ema is not None:
            ema.copy_to(model.parameters())
        save_mvc_model(bb, model.eval(), paths.mvc_model)
        losses = read_rows(loss_csv)
        state.mark_done(cfg, "finetune", time.time() - start, {
            "world_size": accelerator.num_processes, "steps": loop.step,
            "final_loss": float(losses["loss"].tail(20).mean()), "device": str(accelerator.device),
            "mixed_precision": ft.mixed_precision})
    accelerator.wait_for_everyone()
    return paths.mvc_model


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


def save_mvc_model(bb, unet, folder: Path) -> None:
    """A folder that diffusers' `StableDiffusionInstructPix2PixPipeline.from_pretrained` loads."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=bb.vae, text_encoder=bb.text_encoder, tokenizer=bb.tokenizer, unet=unet, scheduler=bb.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    with atomic_dir(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)


def load_loss(cfg: StudyConfig) -> pd.DataFrame:
    return pd.read_csv(cfg.paths.finetune_work / "loss.csv")
