"""The study's vocabulary, each thing declared once: classifier methods, synthetic sets, fine-tuned models.

A `Method` says how a classifier trains (its family, per-image and per-batch transforms, the synthetic sets it
draws from, its phase schedule, its colour in plots); a `SyntheticSet` says how a set of generated images is made
(the model, image-conditioned or text-only or SDEdit, the mixing mode of its prompts, its guidance); a
`FineTunedModel` says what a fine-tuning stage trains (image conditioning, mixing in training, its folders). The
config's allowed names and validators, the classifier grid, generation, metrics, statistics (which rows are MVC,
which are baselines, the best classical one), figures and the report all read these tables, so a new augmentation
or synthetic set is one `register_method` / `register_set` call (timm's `register_model`, in small).

Names are the same everywhere: in params files, folders, `results.csv`, `image_metrics.csv` and the report. A
method that draws from one set shares its name (`sd_naive` trains on the set `sd_naive`); the MVC sets are
`mvc_<mode>`, one per mode of `generate.modes`. This module imports nothing heavy: the config reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Family = Literal["real", "classical", "synthetic", "mvc"]
Sampler = Literal["conditioned", "text", "sdedit"]
MIX_MODES = ("none", "fine", "coarse", "coarse+fine")


# ----------------------------------------------------------------------------------------------------------
# fine-tuned models


@dataclass(frozen=True)
class FineTunedModel:
    """A model a fine-tuning stage trains from the backbone, one per unit (shots level x replicate).

    Its folders: the model `runs/<study>/<name>/` and the work folder `runs/<study>/<stage>/` (loss, checkpoints)
    for the main unit; `runs/<study>/units/<stage>/<unit>/{model,work}/` for the others."""

    name: str
    stage: str  # the stage that trains it (and names its work folder)
    image_conditioned: bool  # InstructPix2Pix: conv_in widened for e_I; else text-to-image from the backbone's UNet
    training_mixing: str | None  # the caption mixing in training: None: `finetune.mixing.mode`; "none": own caption
    summary: str  # one line for `mvc --help`
    always: bool = False  # trained in every unit (MVC's own model); else only where a set the study makes needs it

    @property
    def pipeline(self) -> str:
        """The diffusers pipeline class its folder is saved as."""
        return "StableDiffusionInstructPix2PixPipeline" if self.image_conditioned else "StableDiffusionPipeline"


MODELS: dict[str, FineTunedModel] = {}


def register_model(model: FineTunedModel) -> FineTunedModel:
    MODELS[model.name] = model
    return model


# ----------------------------------------------------------------------------------------------------------
# synthetic sets


def _mvc_guidance(g) -> tuple[float, float]:
    return g.guidance_text, g.guidance_image


def _first_mode(g) -> str:
    return g.modes[0]


@dataclass(frozen=True)
class SyntheticSet:
    """A set of generated images: `images_per_source` per labelled training image of a unit.

    `sampler`: `conditioned` (two-scale guidance on the source's latent and a text mix: MVC), `text` (text-only
    guidance from a mixed prompt), or `sdedit` (diffusers' img2img of the source with its class prompt at
    `generate.img2img_strength`). `mode(g)` is the mixing mode of its prompts, which also keys its seeds, so two
    sets of one mode share prompts and noise. A study makes it when its name is in `generate.sets`; the MVC sets
    (`per_mode`) are made for every mode of `generate.modes` instead."""

    name: str
    model: str  # "backbone" or a `FineTunedModel` name
    sampler: Sampler
    mode: Callable[[Any], str] = _first_mode  # GenerateConfig -> mixing mode of its prompts
    # a number: the default s_T of a text-only or SDEdit set (`generate.set_guidance` overrides it by name; s_I = 1);
    # a callable: GenerateConfig -> (s_T, s_I), as MVC's conditioned sets read generate.guidance_text/guidance_image
    guidance: float | Callable[[Any], tuple[float, float]] = 3.0
    summary: str = ""
    per_mode: bool = False  # one set `<name>_<mode>` per mode of `generate.modes` (the MVC sets)


SETS: dict[str, SyntheticSet] = {}


def register_set(spec: SyntheticSet) -> SyntheticSet:
    SETS[spec.name] = spec
    return spec


def mode_set_name(family: str, mode: str) -> str:
    """`mvc_coarse_fine` for the mode `coarse+fine` of the family `mvc`."""
    return f"{family}_{mode.replace('+', '_')}"


def mvc_set_names(modes) -> tuple[str, ...]:
    """The MVC sets of `modes`, in that order."""
    return tuple(mode_set_name("mvc", m) for m in modes)


def set_spec(name: str) -> tuple[SyntheticSet, str | None]:
    """The declaration of synthetic set `name` and, for a per-mode set, its mode."""
    if name in SETS and not SETS[name].per_mode:
        return SETS[name], None
    for spec in SETS.values():
        if spec.per_mode:
            for mode in MIX_MODES:
                if mode_set_name(spec.name, mode) == name:
                    return spec, mode
    raise KeyError(f"no synthetic set {name!r} is registered (registered: {', '.join(set_names())})")


def set_mode(g, name: str) -> str:
    """The mixing mode of synthetic set `name`'s prompts under the generate params `g`."""
    spec, mode = set_spec(name)
    return mode if mode is not None else spec.mode(g)


def set_guidance(g, name: str) -> tuple[float, float]:
    """(s_T, s_I) of synthetic set `name` under the generate params `g`: `generate.set_guidance`'s s_T where it names
    the set, else its declaration's (a number: that s_T with s_I = 1; a callable: what it reads from `g`)."""
    spec, _ = set_spec(name)
    if callable(spec.guidance):
        return spec.guidance(g)
    return float(g.set_guidance.get(name, spec.guidance)), 1.0


def set_names() -> list[str]:
    """The names a params file can put in `generate.sets` (the per-mode MVC sets come from `generate.modes`)."""
    return [n for n, s in SETS.items() if not s.per_mode]


def synthetic_set_names(g) -> list[str]:
    """The synthetic sets a study makes: the MVC set of each mode of `generate.modes` (in that order), then those
    of `generate.sets` in registry order."""
    out: list[str] = []
    for spec in SETS.values():
        if spec.per_mode:
            out += [mode_set_name(spec.name, m) for m in g.modes]
        elif spec.name in g.sets:
            out.append(spec.name)
    return out


def models_of_sets(names) -> list[str]:
    """The models (fine-tuned ones and "backbone") the synthetic sets `names` are sampled from, in first use order."""
    return list(dict.fromkeys(set_spec(n)[0].model for n in names))


# ----------------------------------------------------------------------------------------------------------
# classifier methods


def _no_transforms(c) -> list:
    return []


def _no_sets(c) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class Method:
    """A classifier training recipe. Every method trains the same backbone for `classify.steps` steps, with the
    crop and flip of `base_transform` after its own per-image `transforms(c)`; `batch(c, num_classes)` acts on
    whole batches (MixUp, CutMix); `sets(c)` are the synthetic sets a real image of a batch may be replaced from
    (with chance `classify.p_synthetic`); `two_phase` ends on real images only at a lower rate; `source` starts on
    the labelled source domain the surrogate backbone learnt from (`classify.source_fraction` of the steps)."""

    name: str
    family: Family  # real: no augmentation; classical: the augmentations the field compares with; synthetic; mvc
    transforms: Callable[[Any], list] = _no_transforms  # ClassifyConfig -> torchvision v2 transforms
    batch: Callable[[Any, int], Any] | None = None  # (ClassifyConfig, classes) -> batch transform
    sets: Callable[[Any], tuple[str, ...]] = _no_sets  # ClassifyConfig -> synthetic sets
    two_phase: bool = False
    source: bool = False
    filtered: bool = False  # only the synthetic images the judge labels as intended (Diff-Mix, Real-Fake)
    color: str = "#6fa8dc"  # in plots
    curve: bool = False  # drawn in the few-shot curve (with the best classical method)
    paired: bool = False  # an MVC method tested against every baseline
    summary: str = ""

    @property
    def is_mvc(self) -> bool:
        return self.family == "mvc"


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def method_names() -> list[str]:
    """Every registered method, in report order."""
    return list(METHODS)


def method_sets(method: str, c) -> tuple[str, ...]:
    """The synthetic sets classifier method `method` draws from under the classify params `c`."""
    return tuple(METHODS[method].sets(c))


def report_order(names) -> list[str]:
    """`names` in registry order (unregistered ones last, alphabetically)."""
    known = [m for m in METHODS if m in set(names)]
    return known + sorted(set(names) - set(known))


def mvc_methods() -> set[str]:
    return {m for m, spec in METHODS.items() if spec.is_mvc}


# the built-in transforms (torchvision imported when a classifier is built, not when the config is read)


def _autoaugment(c) -> list:
    from torchvision.transforms import v2

    policy = {"imagenet": v2.AutoAugmentPolicy.IMAGENET, "cifar10": v2.AutoAugmentPolicy.CIFAR10,
              "svhn": v2.AutoAugmentPolicy.SVHN}[c.autoaugment_policy]
    return [v2.AutoAugment(policy)]


def _randaugment(c) -> list:
    from torchvision.transforms import v2

    return [v2.RandAugment(c.randaugment_num_ops, c.randaugment_magnitude)]


def _trivialaugment(c) -> list:
    from torchvision.transforms import v2

    return [v2.TrivialAugmentWide()]


def _mixup(c, num_classes: int):
    from torchvision.transforms import v2

    return v2.MixUp(alpha=c.mixup_alpha, num_classes=num_classes)


def _cutmix(c, num_classes: int):
    from torchvision.transforms import v2

    return v2.CutMix(alpha=c.cutmix_alpha, num_classes=num_classes)


def _mvc_sets(c) -> tuple[str, ...]:
    return mvc_set_names(c.mvc_modes)


def _one_set(name: str) -> Callable[[Any], tuple[str, ...]]:
    return lambda c: (name,)


# ----------------------------------------------------------------------------------------------------------
# the built-in vocabulary

register_model(FineTunedModel("mvc", "finetune", image_conditioned=True, training_mixing=None,
                              summary="MVC fine-tuning (Figure 3), under accelerate, for every shots level and "
                                      "replicate", always=True))
register_model(FineTunedModel("sd_finetuned", "finetune_sd_finetuned", image_conditioned=False, training_mixing=None,
                              summary="the sd_finetuned baseline: the backbone fine-tuned text-only with MVC's caption "
                                      "mixing (when generate.sets has sd_finetuned)"))
register_model(FineTunedModel("mvc_nomix_trained", "finetune_mvc_nomix_trained", image_conditioned=True,
                              training_mixing="none",
                              summary="the no-mixing-in-training ablation: MVC fine-tuned on own captions (when "
                                      "generate.sets has mvc_nomix_trained)"))

register_set(SyntheticSet("mvc", "mvc", "conditioned", guidance=_mvc_guidance, per_mode=True,
                          summary="the fine-tuned MVC model, conditioned on the source's latent and an MVC mix of its "
                                  "class's captions, one set per mode of generate.modes"))
register_set(SyntheticSet("sd_naive", "backbone", "text",
                          summary="the backbone before fine-tuning, text only, the same prompts and noise as the "
                                  "first MVC set"))
register_set(SyntheticSet("sd_img2img", "backbone", "sdedit", mode=lambda g: "img2img",
                          summary="SDEdit of each source with its class prompt at a fixed t0 "
                                  "(generate.img2img_strength), as Real-Guidance does; no fine-tuning"))
register_set(SyntheticSet("sd_finetuned", "sd_finetuned", "text",
                          summary="the text-only fine-tuned backbone, the sd_naive set's prompts and noise"))
register_set(SyntheticSet("mvc_nomix_trained", "mvc_nomix_trained", "conditioned", mode=lambda g: "none",
                          guidance=_mvc_guidance,
                          summary="MVC fine-tuned without mixing, from each source's own caption"))

register_method(Method("none", "real", color="#7f7f7f", curve=True, summary="no augmentation beyond crop (and flip)"))
register_method(Method("autoaugment", "classical", _autoaugment, summary="AutoAugment (classify.autoaugment_policy)"))
register_method(Method("randaugment", "classical", _randaugment, summary="RandAugment (num_ops, magnitude)"))
register_method(Method("trivialaugment", "classical", _trivialaugment, summary="TrivialAugmentWide"))
register_method(Method("mixup", "classical", batch=_mixup, summary="MixUp on whole batches"))
register_method(Method("cutmix", "classical", batch=_cutmix, summary="CutMix on whole batches"))
register_method(Method("real_two_phase", "real", two_phase=True,
                       summary="real images only, with mvc_two_phase's schedule (the schedule's own effect)"))
register_method(Method("source_pretrained", "real", source=True, color="#3d85c6", curve=True,
                       summary="the generator's extra data used directly: the same classifier trained on the labelled "
                               "source domain first, then on the labelled images"))
register_method(Method("sd_naive", "synthetic", sets=_one_set("sd_naive"), summary="the sd_naive set"))
register_method(Method("sd_img2img", "synthetic", sets=_one_set("sd_img2img"), color="#6aa84f", curve=True,
                       summary="the sd_img2img set (SDEdit)"))
register_method(Method("sd_finetuned", "synthetic", sets=_one_set("sd_finetuned"), color="#8e63ce", curve=True,
                       summary="the sd_finetuned set (text-only fine-tuned backbone)"))
register_method(Method("mvc_nomix", "mvc", sets=lambda c: mvc_set_names(["none"]), color="#e69138",
                       summary="the MVC model's images from each source's own caption (no mixing at generation)"))
register_method(Method("mvc_nomix_trained", "mvc", sets=_one_set("mvc_nomix_trained"), color="#e69138",
                       summary="the mvc_nomix_trained set (no mixing in training either)"))
register_method(Method("mvc", "mvc", sets=_mvc_sets, color="#e69138", curve=True, paired=True,
                       summary="MVC's sets of classify.mvc_modes"))
register_method(Method("mvc_two_phase", "mvc", sets=_mvc_sets, two_phase=True, color="#e69138", paired=True,
                       summary="MVC, then the last two_phase_fraction of steps on real images at a lower rate"))
register_method(Method("mvc_filtered", "mvc", sets=_mvc_sets, filtered=True, color="#e69138",
                       summary="MVC's sets, keeping only the images the judge (trained on val and pool, never on "
                               "test or the generation sources) labels as their intended class"))
register_method(Method("mvc_randaugment", "mvc", _randaugment, sets=_mvc_sets, color="#e69138",
                       summary="MVC's sets with RandAugment on every image"))
