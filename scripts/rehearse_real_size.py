"""Real-size rehearsal of a paper profile: random-weight models with the exact architectures of the hub
repositories the profile names, loaded by hub id from a Hugging Face cache, and the study run stage by stage,
each stage in its own process, recording wall time, peak host and device memory and the device each model ran on.

What it builds (under `HF_HOME`, in the hub cache layout, read with HF_HUB_OFFLINE=1 by the package's own
`from_pretrained` calls): `stable-diffusion-v1-5/stable-diffusion-v1-5` (UNet 859.5 M, VAE 83.7 M, CLIP ViT-L/14
text encoder 123.1 M, CLIP tokenizer from open_clip's bundled BPE, PNDM scheduler) and `Salesforce/blip2-opt-2.7b`
(3.74 B parameters; its OPT tokenizer is a byte-level BPE of OPT's size and special tokens, trained offline on
the words of CLIP's BPE, since OPT's own vocabulary cannot be downloaded). Weights are random (fan-in scaled
noise), written tensor by tensor as safetensors shards, so building never holds a whole model in memory. Then a
CIFAR-10 fixture in torchvision's python-batch format, a random FID Inception, `mvc check` and every stage of
the profile with only locations and counts overridden (classes, shots, steps, images): resolution, dtype, batch
sizes, gradient checkpointing, EMA, compile, captioner and guidance stay as shipped. The one exception is forced by
the counts: SDEdit denoises int(steps x t0) steps, so with one sampling step the SDEdit sets (sd_img2img, DA-Fusion)
run at t0 = 1 (the overrides in the output say so).

    python scripts/rehearse_real_size.py                 # real size: ~45 min on 2 CPU cores, ~40 GB of disk
    python scripts/rehearse_real_size.py --scale tiny --out /tmp/reh/tiny   # dry run at 512 px: 3.3 min on 2 cores
    python scripts/rehearse_real_size.py --scale tiny --tiny-resolution 64  # dry run at 64 px: 3.1 min
    python scripts/rehearse_real_size.py --work /data/reh --keep-models   # a second run reuses the models built
    python scripts/rehearse_real_size.py --extra-set finetune.optimizer=adamw8bit --extra-set finetune.ema_offload=true

Building takes ~20 s for Stable Diffusion (4 GB in float32) and, extrapolated, about a minute for BLIP-2 (14 GB;
`--weights-dtype bf16` halves both); a fine-tuning checkpoint (UNet, two AdamW states, EMA) is ~14 GB at real size.
The dry-run times are on idle cores; with another job on the same 2 cores they took 6-12 minutes.

Writes `<out>.json` and `<out>.md` (default `benchmarks/real_size_rehearsal`, `..._tiny` for the dry run).
Peak device memory comes from each stage record's `peak_device_gib` or, failing that, from the JSON file the
package writes at `$MVC_MEMORY_REPORT` (`{"peak_device_gib": float}`); predictions from `mvc check`'s output.
Exits non-zero, naming the stage, when a stage fails or a model ran on the CPU while CUDA is available.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pickle
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # mvc, and tests.tiny_models for the random Inception
SD_REPO, BLIP2_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5", "Salesforce/blip2-opt-2.7b"
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
GIB = 2**30

# The hub configs (sizes exact; unlisted fields are the libraries' defaults, which equal the hub's).
SD_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
               block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768,
               down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
               up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, attention_head_dim=8, norm_num_groups=32)
SD_VAE = dict(in_channels=3, out_channels=3, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
              down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4,
              norm_num_groups=32, sample_size=512, scaling_factor=0.18215)
SD_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu", projection_dim=768,
               bos_token_id=0, eos_token_id=2, pad_token_id=1)  # the hub's (legacy) ids, as shipped
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                    skip_prk_steps=True, steps_offset=1, clip_sample=False, set_alpha_to_one=False,
                    prediction_type="epsilon")
BLIP2_VISION = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                    image_size=224, patch_size=14, qkv_bias=True)
BLIP2_QFORMER = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                     cross_attention_frequency=2, encoder_hidden_size=1408, vocab_size=30522)
BLIP2_OPT = dict(vocab_size=50304, hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, ffn_dim=10240,
                 word_embed_proj_dim=2560, max_position_embeddings=2048, activation_function="relu",
                 do_layer_norm_before=True, bos_token_id=2, eos_token_id=50118, pad_token_id=1, prefix="</s>")
# (the hub's config since the <image> token was added: vocabulary 50,304 rows, 3,744,761,856 parameters in all)
MODEL_STAGES = ("caption", "embed", "backbone", "finetune", "generate", "metrics", "classify")  # they run a model
# The same layouts, tiny: every block type kept, widths and depths cut (the dry run).
TINY = {"unet": dict(block_out_channels=[32, 64, 64, 64], layers_per_block=1, cross_attention_dim=32, sample_size=8),
        "vae": dict(block_out_channels=[32, 32, 64, 64], layers_per_block=1, sample_size=64),
        "text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     projection_dim=32),
        "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
        "qformer": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        encoder_hidden_size=32),
        "opt": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=32)}


# -- models in the hub cache -----------------------------------------------------------------------------------

def snapshot(hf_home: Path, repo: str, scale: str) -> Path:
    """`hub/models--org--name/snapshots/<commit>/`, with `refs/main` naming that (made-up, stable) commit."""
    base = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    commit = hashlib.sha1(f"mvc-rehearsal:{repo}:{scale}".encode()).hexdigest()
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    folder = base / "snapshots" / commit
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def init_plan(model) -> list[tuple[str, tuple[int, ...], str, float]]:
    """(state-dict key, shape, kind, std) of each distinct parameter of a model built on the meta device."""
    import torch

    names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    buffers = set(model.state_dict()) - names
    if buffers:
        raise NotImplementedError(f"persistent buffers need real values: {sorted(buffers)[:5]}")
    plan, seen = [], set()
    for prefix, module in model.named_modules():
        conv_or_linear = isinstance(module, (torch.nn.Linear, torch.nn.modules.conv._ConvNd))
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:  # a tied weight is saved once, as save_pretrained does
                continue
            seen.add(id(p))
            key, shape = f"{prefix}.{name}" if prefix else name, tuple(p.shape)
            if "Norm" in type(module).__name__:
                kind, std = ("ones" if name == "weight" else "zeros"), 0.0
            elif name == "bias":
                kind, std = "zeros", 0.0
            elif conv_or_linear:  # fan-in scaled: activations keep their size through the depth
                kind, std = "normal", (shape[1] * math.prod(shape[2:]))**-0.5
            else:  # embeddings, query tokens, class and position embeddings
                kind, std = "normal", 0.02
            plan.append((key, shape, kind, std))
    return plan


def write_random_weights(model, folder: Path, stem: str, dtype: str, shard_gib: float) -> int:
    """Random weights for a meta-device `model`, written as `<stem>.safetensors` (or shards with an index, as
    `save_pretrained` names them) one tensor at a time; returns the parameter count."""
    import torch
    from safetensors.torch import save_file

    torch_dtype = getattr(torch, {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype])
    plan, itemsize = init_plan(model), torch.empty(0, dtype=torch_dtype).element_size()
    shard_of, size, shard = [], 0, 0
    for _, shape, _, _ in plan:
        nbytes = itemsize * int(torch.Size(shape).numel())
        if size and size + nbytes > shard_gib * GIB:
            shard, size = shard + 1, 0
        shard_of.append(shard)
        size += nbytes
    count = shard + 1
    names = [f"{stem}.safetensors"] if count == 1 else \
        [f"{stem}-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    gen, pending, weight_map, total = torch.Generator().manual_seed(0), {}, {}, 0
    for i, (key, shape, kind, std) in enumerate(plan):
        t = torch.ones(shape) if kind == "ones" else torch.zeros(shape) if kind == "zeros" else \
            torch.empty(shape).normal_(0.0, std, generator=gen)
        pending[key] = t.to(torch_dtype)
        weight_map[key], total = names[shard_of[i]], total + t.numel()
        if i + 1 == len(plan) or shard_of[i + 1] != shard_of[i]:
            save_file(pending, folder / names[shard_of[i]], metadata={"format": "pt"})
            pending = {}
    if count > 1:
        index = {"metadata": {"total_size": total * itemsize}, "weight_map": weight_map}
        (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


def meta(build):
    """`build()` on the meta device: shapes without memory or initialisation time."""
    import torch

    with torch.device("meta"):
        return build()


def build_sd(folder: Path, scale: str, dtype: str) -> dict[str, int]:
    """stable-diffusion-v1-5's folder: unet, vae, text_encoder, tokenizer, scheduler, feature_extractor,
    model_index.json; returns parameter counts."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

    from mvc.surrogate import clip_tokenizer

    tiny = scale == "tiny"
    counts = {}
    for part, cls, cfg in (("unet", UNet2DConditionModel, {**SD_UNET, **(TINY["unet"] if tiny else {})}),
                           ("vae", AutoencoderKL, {**SD_VAE, **(TINY["vae"] if tiny else {})})):
        (folder / part).mkdir(exist_ok=True)
        model = meta(lambda cls=cls, cfg=cfg: cls.from_config(cfg))
        model.save_config(folder / part)
        counts[part] = write_random_weights(model, folder / part, "diffusion_pytorch_model", dtype, 10.0)
    config = CLIPTextConfig(**{**SD_TEXT, **(TINY["text"] if tiny else {})})
    config.architectures = ["CLIPTextModel"]
    model = meta(lambda: CLIPTextModel(config))
    (folder / "text_encoder").mkdir(exist_ok=True)
    config.save_pretrained(folder / "text_encoder")
    counts["text_encoder"] = write_random_weights(model, folder / "text_encoder", "model", dtype, 10.0)
    clip_tokenizer(77).save_pretrained(folder / "tokenizer")
    (folder / "scheduler").mkdir(exist_ok=True)  # written as the hub has it (clip_sample is no PNDM argument)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "PNDMScheduler", "_diffusers_version": diffusers.__version__, **SD_SCHEDULER}, indent=2))
    CLIPImageProcessor().save_pretrained(folder / "feature_extractor")  # CLIP's 224 px preprocessing, as shipped
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
             "feature_extractor": ["transformers", "CLIPImageProcessor"], "requires_safety_checker": False,
             "safety_checker": [None, None], "scheduler": ["diffusers", "PNDMScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return counts


def opt_tokenizer():
    """A GPT-2/OPT-shaped byte-level BPE (50,265 entries; <s> <pad> </s> <unk> at 0-3, newline at 50118, bos
    </s> prepended), trained offline on the words of open_clip's bundled CLIP BPE file."""
    import gzip

    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Tokenizer

    to_byte = {v: k for k, v in bytes_to_unicode().items()}
    with gzip.open(default_bpe(), "rt", encoding="utf-8") as fh:
        merges = fh.read().split("\n")[1:49152 - 256 - 2 + 1]
    words = []
    for merge in merges:
        piece = "".join(merge.split())
        text = bytes(to_byte[c] for c in piece.replace("</w>", "")).decode("utf-8", "ignore")
        words.append(" " + text if piece.endswith("</w>") else text)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(words, trainers.BpeTrainer(
        vocab_size=50265, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    trained = json.loads(bpe.to_str())["model"]
    vocab = trained["vocab"]
    assert len(vocab) == 50265, len(vocab)
    other = next(t for t, i in vocab.items() if i == 50118)
    vocab["Ċ"], vocab[other] = 50118, vocab["Ċ"]  # OPT's eos_token_id 50118 is the newline token
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    return GPT2Tokenizer(vocab=vocab, merges=merges, bos_token="</s>", eos_token="</s>", unk_token="</s>",
                         pad_token="<pad>", add_bos_token=True)


def build_blip2(folder: Path, scale: str, dtype: str) -> dict[str, int]:
    """Salesforce/blip2-opt-2.7b's folder: config, sharded weights, Blip2Processor; returns the parameter count."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor, OPTConfig

    tiny = scale == "tiny"
    tokenizer = opt_tokenizer()
    processor = Blip2Processor(BlipImageProcessor(size={"height": 224, "width": 224}), tokenizer, num_query_tokens=32)
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    text = OPTConfig(**{**BLIP2_OPT, **(TINY["opt"] if tiny else {})})
    config = Blip2Config(vision_config={**BLIP2_VISION, **(TINY["vision"] if tiny else {})},
                         qformer_config={**BLIP2_QFORMER, **(TINY["qformer"] if tiny else {})},
                         text_config=text.to_dict(), num_query_tokens=32, image_token_index=image_token)
    config.architectures = ["Blip2ForConditionalGeneration"]
    model = meta(lambda: Blip2ForConditionalGeneration(config))
    config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    processor.save_pretrained(folder)
    return {"blip2": write_random_weights(model, folder, "model", dtype, 2.0), "image_token_index": image_token}


def verify_offline(scale: str) -> dict[str, int]:
    """Load every part by hub id through `from_pretrained` (HF_HUB_OFFLINE=1); parameter counts as loaded."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, CLIPTextModel, CLIPTokenizer

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    counts = {}
    for part, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL), ("text_encoder", CLIPTextModel)):
        model, info = cls.from_pretrained(SD_REPO, subfolder=part, output_loading_info=True)
        bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        assert not bad, f"{part}: {bad}"
        counts[part] = sum(p.numel() for p in model.parameters())
        del model
    assert CLIPTokenizer.from_pretrained(SD_REPO, subfolder="tokenizer").model_max_length == 77
    PNDMScheduler.from_pretrained(SD_REPO, subfolder="scheduler")
    Blip2Processor.from_pretrained(BLIP2_REPO)
    if scale == "tiny":  # the real one (15 GB in float32) is loaded by the caption stage itself
        model, info = Blip2ForConditionalGeneration.from_pretrained(BLIP2_REPO, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
    else:
        model = meta(lambda: Blip2ForConditionalGeneration(Blip2Config.from_pretrained(BLIP2_REPO)))
    counts["blip2"] = sum(p.numel() for p in model.parameters())
    return counts


def build_models(hf_home: Path, scale: str, dtype: str) -> dict:
    """Build both repositories under `hf_home` and check they load offline (run in a child process)."""
    t0 = time.time()
    built = {**build_sd(snapshot(hf_home, SD_REPO, scale), scale, dtype),
             **build_blip2(snapshot(hf_home, BLIP2_REPO, scale), scale, dtype)}
    info = {"scale": scale, "weights_dtype": dtype, "written": built, "loaded": verify_offline(scale),
            "seconds": round(time.time() - t0, 1)}
    (hf_home / "rehearsal_models.json").write_text(json.dumps(info, indent=2))
    return info


# -- data, the study's processes -------------------------------------------------------------------------------

def write_cifar10(root: Path, train_per_class: int = 12, test_per_class: int = 4) -> None:
    """CIFAR-10 in torchvision's python-batch format (10 classes, random images), as tests/test_data.py does."""
    import numpy as np

    rng, folder = np.random.default_rng(0), root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n_per_class: int) -> dict:
        labels = [i % 10 for i in range(10 * n_per_class)]
        return {b"data": rng.integers(0, 255, (len(labels), 3072), dtype=np.uint8), b"labels": labels,
                b"filenames": [f"{i}.png".encode() for i in range(len(labels))]}

    files = [(f"data_batch_{i}", -(-train_per_class // 5)) for i in range(1, 6)] + [("test_batch", test_per_class)]
    for name, n in files:
        (folder / name).write_bytes(pickle.dumps(batch(n)))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CIFAR10]}))


def study_overrides(args, work: Path, inception: Path) -> list[str]:
    """Locations, data root and counts only (one fine-tuning checkpoint is saved); the rest as the profile ships."""
    sets = [f"runs_root={work / 'runs'}", f"reports_root={work / 'reports'}", f"data.root={work / 'data'}",
            f"metrics.inception_weights={inception}", f"data.classes=[{','.join(CIFAR10[:args.classes])}]",
            f"data.shots={args.shots}", "data.val_per_class=1", f"finetune.steps={args.steps}",
            "finetune.lr_warmup_steps=0", f"finetune.checkpoint_every={args.steps}", f"generate.steps={args.steps}",
            f"generate.images_per_source={args.images_per_source}", "metrics.judge_steps=2",
            f"classify.steps={args.steps}", "classify.epochs=null", "classify.seeds=[0]", "replicates=1",
            f"data.labelled_per_class={args.shots + 1}", f"textual_inversion.steps={args.steps}",
            f"textual_inversion.checkpoint_every={args.steps}",
            f"generate.dafusion_images_per_source={args.images_per_source}"]
    from mvc.config import load_config

    shipped = load_config(REPO / args.profile).generate
    denoised = [t for t in shipped.dafusion_strengths if int(args.steps * t) >= 1]  # img2img: int(steps x t0) steps
    if denoised != shipped.dafusion_strengths:  # what a run of this few steps can draw (at least t0 = 1)
        sets.append(f"generate.dafusion_strengths=[{','.join(str(t) for t in denoised or [1.0])}]")
    if int(args.steps * shipped.img2img_strength) < 1:
        sets.append("generate.img2img_strength=1.0")
    if args.tiny_resolution:  # the dry run only
        sets.append(f"backbone.resolution={args.tiny_resolution}")
    return sets + args.extra_set


def parse_predictions(check_output: str, stages: list[str]) -> dict[str, float]:
    """Best-effort: the predicted peak GiB of each stage named on a line of `mvc check`'s output that carries a
    GiB/GB figure ("finetune step: 16.6 GiB (parts...)", "| generate | 9.1 GiB |", "finetune 2.0" after "(GB):");
    the largest per stage."""
    aliases = {"latent cache": "finetune"}  # units of work the memory model names, and the stage they run in
    found: dict[str, float] = {}
    for line in check_output.splitlines():
        for alias, stage in aliases.items():
            line = line.replace(alias, stage)
        if not re.search(r"\bGi?B\b", line):
            continue
        for segment in re.split(r"[,;]", line.replace("|", " ")):
            names = [s for s in stages if re.search(rf"\b{s}\b", segment)]
            number = re.findall(r"(\d+(?:\.\d+)?)\s*Gi?B\b", segment) or re.findall(r"\d+\.\d+|\b\d+\b", segment)
            if len(names) == 1 and number:
                found[names[0]] = max(found.get(names[0], 0.0), float(number[-1]))
    return found


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def gpu_used_bytes(pids: set[int]) -> int | None:
    """Device memory nvidia-smi reports for these processes (CUDA context and allocator cache included)."""
    if not shutil.which("nvidia-smi"):
        return None
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout
    rows = [line.split(",") for line in out.splitlines() if line.strip()]
    return sum(int(m) * 2**20 for p, m in rows if p.strip().isdigit() and int(p) in pids)


def run_measured(cmd: list[str], env: dict, log: Path) -> dict:
    """Run `cmd`, polling its process tree's RSS every 0.2 s (and nvidia-smi every second); wall time, peaks."""
    import psutil

    start, peak, smi_peak, last_smi = time.time(), 0, None, 0.0
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, tree_rss(proc.pid))
            if time.time() - last_smi >= 1.0:
                last_smi = time.time()
                try:
                    pids = {proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))}
                except psutil.NoSuchProcess:
                    pids = {proc.pid}
                used = gpu_used_bytes(pids)
                smi_peak = used if smi_peak is None else max(smi_peak, used or 0)
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "wall_s": round(time.time() - start, 1),
            "peak_host_gib": round(max(peak, usage.ru_maxrss * 1024) / GIB, 2),
            "peak_device_smi_gib": None if smi_peak is None else round(smi_peak / GIB, 2)}


def record_facts(stages_dir: Path, stage: str, memory_file: Path) -> dict:
    """From the stage record: the devices its models ran on (every "device" key), the package's own peaks;
    device peak from $MVC_MEMORY_REPORT's file when the record has none."""
    record = stages_dir / f"{stage}.json"
    data = json.loads(record.read_text()) if record.exists() else {}
    devices: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                devices.add(str(v)) if k == "device" and isinstance(v, str) else walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(data)
    device_peak = data.get("peak_device_gib")
    if device_peak is None and memory_file.exists():
        report = json.loads(memory_file.read_text())
        device_peak = report.get("peak_device_gib", report.get("max_memory_allocated_gib"))
    return {"devices": sorted(devices), "peak_device_gib": device_peak, "record_peak_host_gib":
            data.get("peak_host_gib"), "record_seconds": data.get("seconds"), "recorded": record.exists()}


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under `folder`."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def environment(args, sets: list[str]) -> dict:
    """CPU model, library versions, GPU, date, command and overrides."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import torch

    return {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(), "cpu": cpu,
            "cores": os.cpu_count(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "versions": {p: version(p) for p in ("torch", "diffusers", "transformers", "accelerate",
                                                  "huggingface_hub")},
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "profile": args.profile, "overrides": sets}


def write_outputs(out: Path, result: dict) -> None:
    """`<out>.json` and the Markdown table `<out>.md`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2).replace(str(REPO) + "/", "")  # repository paths written relative to it
    Path(f"{out}.json").write_text(text + "\n")
    env, fmt = result["environment"], (lambda v: "" if v is None else f"{v:g}" if isinstance(v, float) else str(v))
    lines = [f"# Real-size rehearsal: {env['profile']} ({result['scale']} models)", "",
             f"- date: {env['date']}; host: {env['host']}; CPU: {env['cpu']} ({env['cores']} cores); GPU: {env['gpu']}",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
             f"- command: `{env['command']}`", f"- overrides: `{' '.join('--set ' + s for s in env['overrides'])}`",
             f"- models: built in {result['models'].get('seconds')} s, parameters as loaded "
             f"{json.dumps(result['models'].get('loaded'))}", *[f"- note: {n}" for n in result["notes"]], "",
             "| stage | wall s | peak host GiB | peak device GiB | predicted GiB | predicted / measured | devices | "
             "runs/ GiB |", "|---|---|---|---|---|---|---|---|"]
    for r in result["stages"]:
        measured = r["peak_device_gib"] or r["peak_host_gib"]
        ratio = f"{r['predicted_gib'] / measured:.2f}" if r["predicted_gib"] and measured else ""
        lines.append(f"| {r['stage']} | {fmt(r['wall_s'])} | {fmt(r['peak_host_gib'])} | {fmt(r['peak_device_gib'])} "
                     f"| {fmt(r['predicted_gib'])} | {ratio} | {', '.join(r['devices'])} | {fmt(r['runs_gib'])} |")
    lines += ["", f"Total: {result['total_s']} s ({result['status']}). Peak host: the stage process and its children "
              "(RSS polled every 0.2 s, or ru_maxrss if larger); peak device: torch.cuda.max_memory_allocated in the "
              "stage (its record, or $MVC_MEMORY_REPORT)."]
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")


def python_path() -> str:
    """The repository first (mvc, tests), then what the caller had (wheels unpacked on a GPU machine)."""
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def repredict(out: Path, args) -> int:
    """Recompute `<out>.json`'s predictions with the current memory model (`mvc check` with the run's overrides and
    HF_HOME), and rewrite both files; the measurements are kept as they were."""
    from mvc.stages import STAGES

    result = json.loads(Path(f"{out}.json").read_text())
    sets = result["environment"]["overrides"]
    work = Path(next(s.split("=", 1)[1] for s in sets if s.startswith("runs_root="))).parent
    env = {**os.environ, "HF_HOME": str(work / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": python_path()}
    check = subprocess.run([sys.executable, "-m", "mvc", "check", result["environment"]["profile"],
                            *[a for s in sets for a in ("--set", s)]], cwd=REPO, env=env, capture_output=True,
                           text=True)
    predicted = parse_predictions(check.stdout + check.stderr, [s.name for s in STAGES])
    result.update(check_output=check.stdout + check.stderr, predicted_gib=predicted)
    for row in result["stages"]:
        row["predicted_gib"] = predicted.get(row["stage"])
    result["notes"].append("predictions recomputed with `--repredict` after the run (memory model of "
                           + time.strftime("%Y-%m-%d %H:%M") + ")")
    write_outputs(out, result)
    print(f"rewrote {out}.json and {out}.md")
    return 0


def ensure_models(args, hf_home: Path, env: dict, logs: Path, notes: list[str]) -> dict:
    """The models under `hf_home`: reused with --keep-models when built at this scale and dtype, else built in a
    child process (measured like a stage)."""
    marker = hf_home / "rehearsal_models.json"
    models = json.loads(marker.read_text()) if marker.exists() else {}
    if args.keep_models and models.get("scale") == args.scale and models.get("weights_dtype") == args.weights_dtype:
        notes.append(f"models reused from {hf_home} (--keep-models), built {models.get('seconds')} s")
        return models
    shutil.rmtree(hf_home, ignore_errors=True)
    print(f"building {args.scale} models under {hf_home} ...", flush=True)
    build = run_measured([sys.executable, __file__, "--scale", args.scale, "--weights-dtype", args.weights_dtype,
                          "--build-models", str(hf_home)], env, logs / "build_models.log")
    if build["rc"]:
        print((logs / "build_models.log").read_text()[-3000:], file=sys.stderr)
        raise SystemExit(f"building the models failed (log: {logs / 'build_models.log'})")
    models = {**json.loads(marker.read_text()), "build": build}
    print(f"  {build['wall_s']} s, peak {build['peak_host_gib']} GiB: {models['loaded']}", flush=True)
    return models


def run_stages(args, sets: list[str], env: dict, work: Path, predicted: dict[str, float]) -> tuple[list, str | None]:
    """Every stage in its own process, in the registry's order; the rows, and the failure that stopped them."""
    import torch

    from mvc.config import load_config
    from mvc.stages import STAGES

    stages_dir = load_config(REPO / args.profile, sets).paths.stages
    set_args = [a for s in sets for a in ("--set", s)]
    rows = []
    names = [s.name for s in STAGES]
    last = names.index(args.until) if args.until else len(names) - 1
    for spec in STAGES[: last + 1]:
        print(f"stage {spec.name} ...", end=" ", flush=True)
        memory_file, log = work / "memory" / f"{spec.name}.json", work / "logs" / f"{spec.name}.log"
        row = run_measured([sys.executable, "-m", "mvc", spec.name, args.profile, *set_args],
                           {**env, "MVC_MEMORY_REPORT": str(memory_file)}, log)
        row = {"stage": spec.name, **row, **record_facts(stages_dir, spec.name, memory_file),
               "predicted_gib": predicted.get(spec.name), "runs_gib": round(folder_bytes(work / "runs") / GIB, 2)}
        if spec.name in MODEL_STAGES and row["recorded"] and not row["devices"]:
            row["devices"] = ["not recorded"]
        rows.append(row)
        print(f"{row['wall_s']} s, host {row['peak_host_gib']} GiB, device {row['peak_device_gib']}, "
              f"{row['devices'] or '-'}", flush=True)
        if row["rc"]:
            return rows, f"stage {spec.name} failed (exit {row['rc']}); log: {log}\n" + log.read_text()[-3000:]
        if torch.cuda.is_available() and any(d.startswith("cpu") for d in row["devices"]):
            return rows, f"stage {spec.name}: a model ran on the CPU ({row['devices']}) while CUDA is available"
    return rows, None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=["real", "tiny"], default="real")
    p.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed at the end)")
    p.add_argument("--profile", default="params/cifar10.yaml")
    p.add_argument("--extra-set", action="append", default=[], metavar="KEY=VALUE", help="one more --set (repeatable)")
    p.add_argument("--out", type=Path, help="output stem (default benchmarks/real_size_rehearsal[_tiny])")
    p.add_argument("--keep-models", action="store_true", help="reuse the models under WORK/hf_home if built before")
    p.add_argument("--weights-dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="of the weights on disk")
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--shots", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="finetune, generate and classify steps")
    p.add_argument("--images-per-source", type=int, default=1)
    p.add_argument("--repredict", action="store_true",
                   help="only recompute the predicted column of <out>.json with the current memory model (mvc check)")
    p.add_argument("--until", help="run the stages up to this one only (e.g. finetune: a variant that changes "
                                   "only the fine-tuning's memory)")
    p.add_argument("--tiny-resolution", type=int, help="with --scale tiny: override backbone.resolution (e.g. 64)")
    p.add_argument("--build-models", type=Path, help=argparse.SUPPRESS)  # internal: the child that builds
    args = p.parse_args(argv)
    if args.build_models:
        print(json.dumps(build_models(args.build_models, args.scale, args.weights_dtype)))
        return 0
    if args.tiny_resolution and args.scale != "tiny":
        raise SystemExit("--tiny-resolution is for --scale tiny only: the real rehearsal keeps the profile's")
    from mvc.stages import STAGES

    out = args.out or REPO / "benchmarks" / ("real_size_rehearsal" + ("_tiny" if args.scale == "tiny" else ""))
    if args.repredict:
        return repredict(out, args)
    work = (args.work or Path(tempfile.mkdtemp(prefix="mvc-rehearsal-"))).resolve()
    for d in (work / "runs", work / "reports", work / "memory"):
        shutil.rmtree(d, ignore_errors=True)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    (work / "memory").mkdir()
    env = {**os.environ, "HF_HOME": str(work / "hf_home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": python_path(),
           "TORCH_HOME": str(work / "torch_home")}
    if not list((work / "torch_home").glob("hub/checkpoints/resnet50-*.pth")):
        from tests.tiny_models import save_random_torchvision_weights

        save_random_torchvision_weights("resnet50", work / "torch_home")  # the classifier's ImageNet weights
    t0, notes = time.time(), []
    if args.scale == "tiny":
        notes.append("DRY RUN: tiny models with the real layouts and hub ids" + (
            f"; backbone.resolution overridden to {args.tiny_resolution}" if args.tiny_resolution else ""))
    models = ensure_models(args, work / "hf_home", env, work / "logs", notes)
    inception = work / "inception" / "weights-inception-2015-12-05-6726825d.pth"
    if not inception.exists():
        from tests.tiny_models import save_random_inception

        inception.parent.mkdir(parents=True, exist_ok=True)
        save_random_inception(inception)
    if not (work / "data" / "cifar-10-batches-py").exists():
        write_cifar10(work / "data", train_per_class=max(12, 2 * (args.shots + 1)))
    sets = study_overrides(args, work, inception)
    set_args = [a for s in sets for a in ("--set", s)]
    check = subprocess.run([sys.executable, "-m", "mvc", "check", args.profile, *set_args], cwd=REPO, env=env,
                           capture_output=True, text=True)
    (work / "logs" / "check.log").write_text(check.stdout + check.stderr)
    if check.returncode:  # a refusal is a finding too: the stages then show what happens
        notes.append(f"mvc check exited {check.returncode}: {(check.stderr.strip().splitlines() or [''])[-1]}")
    predicted = parse_predictions(check.stdout + check.stderr, [s.name for s in STAGES])
    rows, failure = run_stages(args, sets, env, work, predicted)
    result = {"scale": args.scale, "environment": environment(args, sets), "models": models, "notes": notes,
              "check_output": check.stdout + check.stderr, "predicted_gib": predicted, "stages": rows,
              "status": ("failed: " + failure.splitlines()[0]) if failure else "ok",
              "total_s": round(time.time() - t0, 1)}
    write_outputs(out, result)
    remove = args.work is None and not args.keep_models and not failure
    print(f"wrote {out}.json and {out}.md ({result['total_s']} s); work folder {work}" + (" (removed)" * remove))
    if remove:
        shutil.rmtree(work, ignore_errors=True)
    if failure:
        print(failure, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
