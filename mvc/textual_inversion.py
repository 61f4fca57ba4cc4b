"""DA-Fusion's per-class tokens by textual inversion (Gal et al., ICLR 2023; Trabucco et al., ICLR 2024).

For each class a new token `<mvc-class-N>` joins the backbone's tokenizer; its embedding starts from
`textual_inversion.initializer`'s and is learnt on the class's labelled images by the diffusion loss, with the
prompt `data.prompt_template` naming the token in place of the class name, while the UNet, the VAE and every other
embedding stay frozen. Each class is learnt on its own (as DA-Fusion's script does), so the classes are shared out
over accelerate processes. A class's learnt vector is kept in the work folder as soon as it is done and the class
being learnt checkpoints every `textual_inversion.checkpoint_every` steps, so an interrupted stage resumes where it
stopped. The model folder is the backbone with the tokens in its tokenizer and text encoder (a diffusers
`StableDiffusionPipeline` folder, which the img2img pipeline loads), and `learned_embeds.safetensors` holds the
vectors by token, for `load_tokens` into any pipeline of the same text encoder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mvc.artifacts import DiffusionImages, backbone_source, load_caption_embeddings
from mvc.components import diffusion_loss, encode_latents, load_backbone, save_model, use_attention
from mvc.config import StudyConfig
from mvc.io import atomic_path, write_json
from mvc.progress import progress
from mvc.registry import MODELS
from mvc.runtime import effective_mixed_precision, process_state, release_memory

log = logging.getLogger(__name__)
EMBEDS_FILE = "learned_embeds.safetensors"


def class_token(label: int) -> str:
    """The token that stands for class `label` in DA-Fusion's prompts."""
    return f"<mvc-class-{int(label)}>"


def class_prompt(template: str, label: int) -> str:
    """`data.prompt_template` with class `label`'s token for its name ("a photo of a <mvc-class-3>")."""
    return template.format(name=class_token(label))


def add_class_tokens(tokenizer, text_encoder, labels, initializer: str) -> list[int]:
    """Add one token per class of `labels` to the tokenizer and the text encoder's input embeddings, each starting
    from `initializer`'s embedding; their ids."""
    start = tokenizer(initializer, add_special_tokens=False).input_ids
    if len(start) != 1:
        raise ValueError(f"textual_inversion.initializer: {initializer!r} is {len(start)} tokens for this backbone's "
                         "tokenizer; name one word that is a single token (DA-Fusion's: 'the')")
    tokens = [class_token(c) for c in labels]
    tokenizer.add_tokens(tokens)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the rows are set just below
    ids = tokenizer.convert_tokens_to_ids(tokens)
    with torch.no_grad():
        weight = text_encoder.get_input_embeddings().weight
        weight[ids] = weight[start[0]].clone()
    return ids


def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """The token-level last hidden state of `prompts`, as diffusers' pipelines encode them (padding to the
    tokenizer's maximum length; the attention mask where the encoder's config asks for one), with gradients."""
    batch = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                      return_tensors="pt")
    device = text_encoder.device
    mask = batch.attention_mask.to(device) if getattr(text_encoder.config, "use_attention_mask", False) else None
    return text_encoder(batch.input_ids.to(device), attention_mask=mask)[0]


def load_tokens(pipe, file: str | Path) -> list[str]:
    """Load the learnt tokens of `file` (`learned_embeds.safetensors`) into a diffusers pipeline of the same text
    encoder, with diffusers' `load_textual_inversion`; the tokens."""
    vectors = load_file(str(file))
    tokens = sorted(vectors, key=lambda t: int(t.rsplit("-", 1)[1].rstrip(">")))
    pipe.load_textual_inversion([{t: vectors[t]} for t in tokens], token=tokens)
    return tokens


def _step_generators(seed: int, label: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    seq = np.random.SeedSequence([seed, label, step])
    return np.random.default_rng(seq), torch.Generator().manual_seed(int(seq.generate_state(1)[0]))


def learn_token(cfg: StudyConfig, bb, latents: torch.Tensor, label: int, token_id: int, work: Path, device,
                show_progress: bool = True, max_steps: int | None = None) -> torch.Tensor | None:
    """Learn class `label`'s token embedding on its scaled latents; the vector, or None when `max_steps` stopped it
    (its checkpoint kept). Resumes from the class's checkpoint in `work`."""
    ti = cfg.textual_inversion
    embeddings = bb.text_encoder.get_input_embeddings()
    prompt = class_prompt(cfg.data.prompt_template, label)
    # the other rows the prompt reads get gradients too: those, and only those, are put back after every step
    ids = bb.tokenizer([prompt], padding="max_length", max_length=bb.tokenizer.model_max_length, truncation=True,
                       return_tensors="pt").input_ids.unique()
    touched = ids[ids != token_id].to(embeddings.weight.device)
    frozen = embeddings.weight.detach()[touched].clone()
    opt = torch.optim.AdamW([embeddings.weight], lr=ti.learning_rate, weight_decay=0.0)
    checkpoint, step = work / f"checkpoint-class-{label}.pt", 0
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu")
        with torch.no_grad():
            embeddings.weight[token_id] = state["vector"].to(embeddings.weight)
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
        log.info("textual inversion: class %d resumed at step %d", label, step)
    precision = effective_mixed_precision(ti.mixed_precision, torch.device(device).type,
                                          "textual_inversion.mixed_precision")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def save_checkpoint(loss: torch.Tensor) -> None:
        with atomic_path(checkpoint) as tmp:
            torch.save({"vector": embeddings.weight[token_id].detach().cpu(), "optimizer": opt.state_dict(),
                        "step": step, "loss": float(loss.detach())}, tmp)

    loss = None
    bar = progress(total=ti.steps, initial=step, desc=f"textual inversion {class_token(label)}",
                   disable=not show_progress)
    while step < ti.steps and (max_steps is None or step < max_steps):
        rng, gen = _step_generators(cfg.finetune.seed, label, step)
        rows = rng.integers(0, len(latents), ti.batch_size)
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            text = encode_prompts(bb.tokenizer, bb.text_encoder, [prompt] * ti.batch_size)
            loss = diffusion_loss(bb.unet, bb.scheduler, latents[rows].to(device), text, None, gen)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():  # only the class's row learns: the prompt's other words are put back exactly
            embeddings.weight[touched] = frozen
        step += 1
        bar.update(1)
        if step % ti.checkpoint_every == 0 and step < ti.steps:
            save_checkpoint(loss)
    bar.close()
    if step < ti.steps:  # stopped by max_steps: where it stopped is kept
        if loss is not None:
            save_checkpoint(loss)
        return None
    return embeddings.weight[token_id].detach().float().cpu()


def train_tokens(cfg: StudyConfig, name: str, show_progress: bool = True, max_steps: int | None = None) -> dict | None:
    """Stage body of a `trains="tokens"` model for this unit: each of this process's classes learnt (or read back
    from the work folder), then, on the main process, the model folder written; its summary, {} on the other
    processes, None when `max_steps` stopped it."""
    spec = MODELS[name]
    out, work = cfg.paths.model(name, spec.stage), cfg.paths.model_work(spec.stage)
    dist = process_state(cfg.device)
    device = dist.device
    frame = load_caption_embeddings(cfg).frame
    labels = sorted(int(c) for c in frame["label"].unique())
    dtype = torch.bfloat16 if device.type == "cuda" and effective_mixed_precision(
        cfg.textual_inversion.mixed_precision, device, "textual_inversion.mixed_precision") == "bf16" else None
    bb = load_backbone(backbone_source(cfg), cfg.backbone.revision, unet_dtype=dtype)
    ids = add_class_tokens(bb.tokenizer, bb.text_encoder, labels, cfg.textual_inversion.initializer)
    use_attention(bb.unet, cfg).requires_grad_(False).to(device).eval()
    bb.vae.requires_grad_(False).to(device).eval()
    bb.text_encoder.to(device).eval().requires_grad_(False)  # eval: no dropout (gradients still reach the rows)
    bb.text_encoder.get_input_embeddings().weight.requires_grad_(True)
    scale = bb.vae.config.scaling_factor
    stopped = False
    for label, token_id in list(zip(labels, ids))[dist.process_index::dist.num_processes]:
        done = work / "tokens" / f"{label}.safetensors"
        if done.exists():
            continue
        rows = frame["label"].to_numpy() == label
        latents = encode_latents(bb.vae, DiffusionImages(cfg, frame["image_id"].to_numpy()[rows])) * scale
        vector = learn_token(cfg, bb, latents, label, token_id, work, device, show_progress, max_steps)
        if vector is None:
            stopped = True
            break
        with atomic_path(done) as tmp:
            save_file({class_token(label): vector.contiguous()}, str(tmp))
        (work / f"checkpoint-class-{label}.pt").unlink(missing_ok=True)
    dist.wait_for_everyone()
    if stopped or not dist.is_main_process:
        release_memory()
        return None if stopped else {}
    vectors = {class_token(c): load_file(str(work / "tokens" / f"{c}.safetensors"))[class_token(c)] for c in labels}
    bb.text_encoder.eval().requires_grad_(False)
    with torch.no_grad():
        weight = bb.text_encoder.get_input_embeddings().weight
        for token_id, c in zip(ids, labels):
            weight[token_id] = vectors[class_token(c)].to(weight)
    summary = {"tokens": len(labels), "steps_per_class": cfg.textual_inversion.steps, "device": str(device),
               "world_size": dist.num_processes, "shots": cfg.shots_now, "replicate": cfg.replicate,
               "seed": cfg.finetune.seed, "initializer": cfg.textual_inversion.initializer}
    write_json(work / "summary.json", summary)

    def tokens_files(folder: Path) -> None:
        save_file({t: v.contiguous() for t, v in vectors.items()}, str(folder / EMBEDS_FILE))
        (folder / "tokens.json").write_text(json.dumps({str(c): class_token(c) for c in labels}, indent=2) + "\n")

    bb.text_encoder.cpu()
    save_model(bb, bb.unet.float().cpu(), out, spec.pipeline, tokens_files)  # last: marks the unit done
    release_memory()
    return summary
