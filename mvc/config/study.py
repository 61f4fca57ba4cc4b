"""The study's schema: its top-level fields, its sections, and the checks that span sections."""

from __future__ import annotations

import re
import warnings
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mvc import registry
from mvc.config.evaluation import ClassifyConfig, MetricsConfig, ReportConfig, SelectConfig, _known_methods
from mvc.config.sections import (
    BackboneConfig,
    CaptionConfig,
    DataConfig,
    FinetuneConfig,
    GenerateConfig,
    MethodName,
    TextConfig,
    TextualInversionConfig,
)
from mvc.config.views import UnitViews

STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class StudyConfig(UnitViews):
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
    textual_inversion: TextualInversionConfig = TextualInversionConfig()  # DA-Fusion's tokens (generate.sets: dafusion)
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
    def primary_level(self) -> int | None:
        """The shots level of the primary contrast: `report.primary_shots`, or the largest level."""
        return self.report.primary_shots or self.data.max_shots

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
        if self.report.primary_shots is not None and self.report.primary_shots not in self.data.shot_levels:
            raise ValueError(f"report.primary_shots is {self.report.primary_shots}, not a level of data.shots "
                             f"({self.data.shots}): name one of them, or null for the largest")
        primary = self.primary_level
        if self.curve_methods is not None and primary != self.data.max_shots:
            missing = {registry.role_of("under_test"), self.report.comparator} - set(self.curve_methods)
            if missing:
                raise ValueError(f"report.primary_shots is {primary}, below the largest level, but curve_methods "
                                 f"leaves out {sorted(missing)}, so the primary contrast would not run there: add "
                                 f"them to curve_methods")
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
