"""The schema's sections for evaluation: the metrics of the synthetic sets, the classifiers, the report and what
`mvc select` tries."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mvc import registry
from mvc.config.sections import MethodName, MixMode, Section


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
    ], min_length=1)  # the methods compared (mvc/vocabulary.py)
    seeds: list[int] = Field([0, 1, 2], min_length=1)  # classifier seeds: each method trains once per seed
    # small_cnn | resnet18 | resnet50 | efficientnet_lite0 (ImageNet weights installed from the registry: offline, for
    # the CPU profiles on natural images) | timm:<name>
    backbone: str = "small_cnn"
    # the side images are resized to for an ImageNet-pretrained backbone (and efficientnet_lite0): 224 as the field
    # runs ResNet-50 (DA-Fusion 256, Diff-Mix 224 or 448)
    input_size: int = Field(64, ge=16, le=512)
    small_cnn_width: int = Field(32, ge=4)  # channels of small_cnn's first block (x2, x4 after)
    # ImageNet weights, read offline from the torch hub cache (resnet18/50) or the Hugging Face cache (timm:<name>);
    # `mvc study` names the missing ones before any work
    pretrained: bool = False
    # finetune: every weight trains (Diff-Mix's recipe); linear_probe: the pretrained body frozen (batch norm in
    # eval mode), only the new linear head trains (DA-Fusion's)
    train: Literal["finetune", "linear_probe"] = "finetune"
    steps: int = Field(300, ge=1)  # optimizer steps, the same for every method (unless `epochs` is set)
    # passes over the unit's labelled images instead of `steps`: steps = ceil(epochs x train images / batch_size),
    # the same for every method of a unit (full-data profiles count in epochs, as the field does)
    epochs: float | None = Field(None, gt=0)
    warmup_steps: int = Field(0, ge=0)  # linear warm-up of the first phase before its cosine schedule
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # of the cross-entropy (Diff-Mix: 0.1)
    batch_size: int = Field(64, ge=1)  # images per optimizer step
    optimizer: Literal["adamw", "sgd"] = "adamw"  # sgd: momentum 0.9, nesterov
    lr: float = Field(3e-3, gt=0)  # peak learning rate of the cosine schedule
    weight_decay: float = Field(5e-4, ge=0)  # decoupled weight decay (AdamW) or L2 (SGD)
    p_synthetic: float = Field(0.5, ge=0, le=1)  # a synthetic image replaces its real source with this chance
    # how real and synthetic images combine (docs/protocol.md): own, a real image replaced by one of its own
    # synthetics with probability p_synthetic (DA-Fusion's); class, by any synthetic image of its class; concat, the
    # two sets pooled (each image drawn equally often; p_synthetic unused); synthetic_only, every real image replaced
    combine: Literal["own", "class", "concat", "synthetic_only"] = "own"
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
    # pseudo_label (self-training on the pool): a pool image joins, with the class the reference method's classifier
    # (one per unit, seed `seed`) gives it, where that classifier's softmax is at least this (FixMatch's 0.95)
    pseudo_label_threshold: float = Field(0.95, gt=0, le=1)
    crop_padding: int = 2  # random crop after padding by this many pixels, for every method
    hflip: bool = True  # a horizontal flip changes a digit's identity: off for digits
    ablation: bool = False  # also run the ablation grid (mode, M, p_synthetic, one vs two phase)
    # processes (one thread each) that share the grid on one machine without accelerate: the small classifiers
    # are overhead-bound, so two processes on two cores run about twice the runs of one two-thread process
    workers: int = Field(1, ge=1)
    # weights and batches in channels-last layout: oneDNN's faster convolutions (small_cnn on 2 CPU cores: 21 ->
    # 14 ms per step; the same arithmetic up to float order), and what mixed precision wants on GPUs
    channels_last: bool = True
    # autocast precision of each training step's forward and backward (evaluation stays float32): no | bf16 |
    # auto (bf16 where the CPU computes it natively, AVX512-BF16 or AMX, or on a GPU that supports it; float32
    # elsewhere). small_cnn on one EPYC thread with AVX512-BF16: 14.3 -> 10.7 ms per step
    mixed_precision: Literal["no", "bf16", "auto"] = "no"

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v):
        return "no" if v is False else v

    @field_validator("methods")
    @classmethod
    def _registered(cls, v: list[str]) -> list[str]:
        return _known_methods(v, "classify.methods")

    @model_validator(mode="after")
    def _probe_needs_weights(self) -> ClassifyConfig:
        if self.train == "linear_probe" and not (self.pretrained or self.backbone == "efficientnet_lite0"):
            raise ValueError(f"classify.train: linear_probe trains only the head of a pretrained body, but "
                             f"classify.pretrained is false for {self.backbone}: set classify.pretrained: true, or "
                             f"classify.train: finetune")
        return self

    def steps_for(self, train_images: int) -> int:
        """The optimizer steps of one run on `train_images` labelled images: `epochs` passes when set, else
        `steps`."""
        return self.steps if self.epochs is None else max(1, math.ceil(self.epochs * train_images / self.batch_size))


class ReportConfig(Section):
    # the baseline MVC is compared with, fixed before any result is seen; by default the method holding the
    # `tuned_classical` role of mvc/vocabulary.py (RandAugment, as the paper names it); the report tests MVC against
    # every baseline too, with Holm's correction
    comparator: str = Field(default_factory=lambda: registry.role_of("tuned_classical"))
    # the primary contrast, declared before the run: the method under test minus `comparator` at this shots level
    # (None: the largest), reported first, alone and uncorrected, with the difference it can detect (mde80) and the
    # replicates that would detect `primary_target` points; every other test is secondary
    primary_shots: int | None = Field(None, ge=1)
    primary_target: float = Field(1.0, gt=0)  # top-1 points the design should detect with 80% power
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
