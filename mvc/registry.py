"""The study's vocabulary, each thing declared once: datasets, captioners, fine-tuned models, samplers, synthetic
sets and classifier methods.

A `Dataset` names a reader of a format on disk; a `CaptionerSpec` builds a captioner and says what the memory model
needs of it; a `FineTunedModel` says what a fine-tuning stage trains (image conditioning, mixing in training, its
folders); a `Sampler` draws a batch of images from a model (its own steps and scheduler where it wants them); a
`SyntheticSet` says how a set of generated images is made (its model, its sampler, the mixing mode of its prompts,
its guidance, its M); a `Method` says how a classifier trains (its family, per-image and per-batch transforms, the
synthetic sets it draws from, its phase schedule, its colour in plots). Methods and sets may carry a role (`ROLES`):
the report, selection, statistics and figures ask for the role, not the name. The config's allowed names and
validators, the classifier grid, generation, metrics, statistics, figures and the report all read these tables, so
each new thing is one `register_*` call (timm's `register_model`, in small).

Names are the same everywhere: in params files, folders, `results.csv`, `image_metrics.csv` and the report. A
method that draws from one set shares its name (`sd_naive` trains on the set `sd_naive`); the MVC sets are
`mvc_<mode>`, one per mode of `generate.modes`. This module holds the declarations and the tables; the kit's own
entries are declared in `mvc.vocabulary`, which `import mvc` loads. It imports nothing heavy: the config reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Family = Literal["real", "classical", "synthetic", "mvc", "oracle", "semi_supervised"]
MIX_MODES = ("none", "fine", "coarse", "coarse+fine")

# the roles a method or set may hold; the last one registered with a role holds it
ROLES = {
    "reference": "the method every other is read against: no augmentation (a method)",
    "under_test": "the method the study is about: MVC (a method; paired with every baseline, its recipe selected)",
    "tuned_classical": "the classical baseline whose knobs the selection tunes: RandAugment (a method)",
    "naive": "the set of the backbone before fine-tuning, shown beside MVC's images in the figures (a set)",
}


# ----------------------------------------------------------------------------------------------------------
# datasets and captioners


@dataclass(frozen=True)
class Dataset:
    """A dataset format on disk: `reader(DataConfig)` returns a `mvc.datasets.Reader` (its items, one image)."""

    name: str
    reader: Callable[[Any], Any]  # DataConfig -> mvc.datasets.Reader
    summary: str = ""
    # a testbed with known concepts: an image's source -> its factors ({"colour": "red", ...}); the metrics then
    # measure novel factor combinations (`mvc.factor_probes`)
    factors: Callable[[str], dict] | None = None


DATASETS: dict[str, Dataset] = {}


def register_dataset(spec: Dataset) -> Dataset:
    DATASETS[spec.name] = spec
    return spec


@dataclass(frozen=True)
class CaptionerSpec:
    """A captioner: `build(CaptionConfig, device)` returns a callable from uint8 images (N, H, W, C) to captions.
    `weights(CaptionConfig)` is its parameter count for the memory model (None: small enough to ignore);
    `on_device` means it runs on the process's accelerator (the stage records where)."""

    name: str
    build: Callable[[Any, str], Callable]
    weights: Callable[[Any], int] | None = None
    on_device: bool = False
    summary: str = ""


CAPTIONERS: dict[str, CaptionerSpec] = {}


def register_captioner(spec: CaptionerSpec) -> CaptionerSpec:
    CAPTIONERS[spec.name] = spec
    return spec


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
    # what its stage trains: "unet", the UNet with the diffusion loss (`mvc.finetune`); "tokens", one new token
    # embedding per class with everything else frozen (textual inversion, `mvc.textual_inversion`: DA-Fusion's)
    trains: Literal["unet", "tokens"] = "unet"
    reads: tuple[str, ...] = ("finetune",)  # the params its stage reads (a section or dotted fields), in its hash

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


@dataclass(frozen=True)
class Sampler:
    """How a batch of a synthetic set is drawn from its model: `draw(batch)` takes a `mvc.samplers.SampleBatch` (the
    sources, seeds, model, text conditions, guidance, steps and scheduler) and returns uint8 images (H, W, C).
    `steps` and `scheduler` override `generate.steps` / `generate.scheduler` for the sets that use it."""

    name: str
    draw: Callable[[Any], list]
    image_conditioned: bool = False  # reads the source's latent e_I: its model must be image-conditioned
    img2img: bool = False  # draws through diffusers' img2img pipeline over its model
    # an img2img sampler's t0 values (GenerateConfig -> list): each image denoises int(steps x t0) steps from one of
    # them; the schema refuses a t0 that denoises none, the GPU bill counts their mean share of the steps
    strengths: Callable[[Any], list[float]] | None = None
    pool: bool = False  # reads `SampleBatch.partners`: real pool images of each source's class (the oracles)
    steps: int | None = None
    scheduler: str | None = None

    @property
    def text_only(self) -> bool:
        """Guided by text alone (one scale, s_T): what `generate.set_guidance` may set."""
        return not self.image_conditioned


SAMPLERS: dict[str, Sampler] = {}


def register_sampler(spec: Sampler) -> Sampler:
    SAMPLERS[spec.name] = spec
    return spec


def _first_mode(g) -> str:
    return g.modes[0]


@dataclass(frozen=True)
class SyntheticSet:
    """A set of generated images: M per labelled training image of a unit (`images_per_source`, else
    `generate.images_per_source`), drawn by its `sampler` (a `Sampler`, or the name of a registered one) from its
    `model`. `mode(g)` is the mixing mode of its prompts, which also keys its seeds, so two sets of one mode share
    prompts and noise. A study makes it when its name is in `generate.sets`; the MVC sets (`per_mode`) are made for
    every mode of `generate.modes` instead."""

    name: str
    model: str  # "backbone" or a `FineTunedModel` name
    sampler: Sampler | str
    mode: Callable[[Any], str] = _first_mode  # GenerateConfig -> mixing mode of its prompts
    # a number: the default s_T of a text-only or SDEdit set (`generate.set_guidance` overrides it by name; s_I = 1);
    # a callable: GenerateConfig -> (s_T, s_I), as MVC's conditioned sets read generate.guidance_text/guidance_image
    guidance: float | Callable[[Any], tuple[float, float]] = 3.0
    summary: str = ""
    per_mode: bool = False  # one set `<name>_<mode>` per mode of `generate.modes` (the MVC sets)
    # its own M (a number, or GenerateConfig -> a number, e.g. a field of its own); None: generate.images_per_source
    images_per_source: int | Callable[[Any], int] | None = None
    role: str | None = None  # a key of ROLES

    @property
    def draws(self) -> Sampler:
        """Its sampler's declaration."""
        return self.sampler if isinstance(self.sampler, Sampler) else SAMPLERS[self.sampler]


SETS: dict[str, SyntheticSet] = {}


def register_set(spec: SyntheticSet) -> SyntheticSet:
    _check_role(spec.role)
    if isinstance(spec.sampler, str) and spec.sampler not in SAMPLERS:
        raise KeyError(f"synthetic set {spec.name}: no sampler {spec.sampler!r} (registered: {', '.join(SAMPLERS)})")
    SETS[spec.name] = spec
    return spec


def _check_role(role: str | None) -> None:
    if role is not None and role not in ROLES:
        raise KeyError(f"no role {role!r} (roles: {', '.join(ROLES)})")


def set_images_per_source(g, name: str) -> int:
    """M of synthetic set `name`: its declaration's, else `generate.images_per_source`."""
    m = set_spec(name)[0].images_per_source
    return (m(g) if callable(m) else m) or g.images_per_source


def text_only_set_names() -> list[str]:
    """The registered sets guided by text alone (what `generate.set_guidance` may name)."""
    return [n for n in set_names() if SETS[n].draws.text_only]


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
    # a share 1 - f of its sets' images swapped for images of other classes (their labels kept), f the label fidelity
    # the judge measures of the method under test's first set: a perfect generator made as wrong as MVC's (an oracle)
    label_noise: bool = False
    # the unlabelled pool, pseudo-labelled by the reference method's classifier where it is at least
    # `classify.pseudo_label_threshold` confident, replaces real images as a synthetic set would (self-training)
    pseudo_labels: bool = False
    color: str = "#6fa8dc"  # in plots
    curve: bool = False  # drawn in the few-shot curve (with the best classical method)
    paired: bool = False  # an MVC method tested against every baseline
    summary: str = ""
    role: str | None = None  # a key of ROLES

    @property
    def is_mvc(self) -> bool:
        return self.family == "mvc"

    def draws_images(self, c) -> bool:
        """True when real images of a batch may be replaced (by a synthetic set's or pseudo-labelled pool images)."""
        return bool(self.sets(c)) or self.pseudo_labels


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    _check_role(method.role)
    METHODS[method.name] = method
    return method


def role_of(role: str) -> str:
    """The name of the method or set that holds `role` (the last registered with it)."""
    _check_role(role)
    holders = [n for n, m in METHODS.items() if m.role == role] + [n for n, x in SETS.items() if x.role == role]
    if not holders:
        raise KeyError(f"no method or set holds the role {role!r} ({ROLES[role]})")
    return holders[-1]


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
