"""The stage table: every stage of a study declared once, with what it reads, needs and writes.

Each `Stage` names the params it reads (a section such as `caption`, or a field such as `text.max_length`), the
stages whose outputs it reads, the notebook that runs it, and the work files it writes. Run order, stage hashes,
the CLI's subcommands and the study runner's notebook table are all derived from this one list (DVC's
`deps`/`params`/`outs`, in Python). The fine-tuning stages come from the fine-tuned models of `mvc.registry`. The
functions are bound where they are defined (`@stage(name, reader=...)` in `mvc.state`) and collected by
`mvc.pipeline`, which imports them; this table imports nothing heavy, since the config's hashes read it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mvc.registry import MODELS, FineTunedModel

# Fields that say where a study runs, not what it computes: they are in no stage's hash.
LOCATION_FIELDS = ("study", "runs_root", "reports_root", "device")
# Sections read by a command, not by a stage (`mvc select`): in no stage's hash either.
TOOL_SECTIONS = ("select",)


@dataclass(frozen=True)
class Stage:
    name: str
    reads: tuple[str, ...]  # params read: a section ("caption") or a dotted field ("text.max_length")
    after: tuple[str, ...]  # stages whose outputs this one reads
    notebook: str  # the numbered notebook that runs it
    outputs: Callable[[Any], tuple[Path, ...]]  # StudyPaths -> the work files it writes (deleted on new params)
    summary: str  # one line for `mvc --help`
    ignores: tuple[str, ...] = ()  # fields inside a section of `reads` that the stage does not read
    # a per-unit stage's folders of one unit (StudyPaths of that unit -> paths); the main unit's are the study's own,
    # so they move when the main unit (the largest level) changes (`mvc.state.move_main_unit`)
    unit_outputs: Callable[[Any], tuple[Path, ...]] | None = None


NOTEBOOKS = {
    "01": "01_data_preparation.ipynb",
    "02": "02_captioning.ipynb",
    "03": "03_mvc_finetuning.ipynb",
    "04": "04_generation.ipynb",
    "05": "05_classification.ipynb",
    "06": "06_figures_tables.ipynb",
}

# The classifier recipe the judge of label fidelity is trained with (`mvc.judge.train_judge`): the fields of
# `classify` that a `none` run reads, less the network, its weights and its steps, which `metrics.judge_*` set. The
# metrics stage reads these and no other classifier field, so a new method or seed does not re-measure the sets.
JUDGE_RECIPE = ("input_size", "batch_size", "optimizer", "lr", "weight_decay", "crop_padding", "hflip",
                "channels_last")

# The surrogate's text encoder is built from these fields (a pretrained backbone's from `backbone.model`).
_TEXT_ENCODER_FIELDS = ("backbone.kind", "backbone.model", "backbone.revision", "backbone.surrogate.text_encoder",
                        "backbone.surrogate.text_hidden_size",
                        "backbone.surrogate.text_layers", "backbone.surrogate.text_heads", "backbone.surrogate.seed")


def model_stage(model: FineTunedModel) -> Stage:
    """The stage that fine-tunes `model` for every unit. A model other than MVC's is trained only where a synthetic
    set the study makes is sampled from it (`generate.sets`, and below the largest level the `curve_methods`).
    `replicates` is in no hash of a per-unit stage: replicate r's seeds do not depend on R, so a study given more
    replicates runs the new units only (`PER_UNIT`)."""
    reads = model.reads + ("redraw_labelled",) + (() if model.always else ("curve_methods", "classify.mvc_modes",
                                                                          "generate.sets"))
    return Stage(model.stage, reads, ("embed", "backbone"), "03",
                 lambda p, m=model: (p.model(m.name, m.stage), p.model_work(m.stage), p.model_units(m.stage)),
                 model.summary, unit_outputs=lambda p, m=model: (p.model(m.name, m.stage), p.model_work(m.stage)))


STAGES: tuple[Stage, ...] = (
    Stage("data", ("data", "seed"), (), "01", lambda p: (p.splits, p.images, p.skipped),
          "read the dataset, make seeded splits, cache the images", ignores=("data.shots",)),
    Stage("caption", ("caption", "data.prompt_template"), ("data",), "02", lambda p: (p.captions,),
          "caption the images (BLIP-2 or the offline attribute captioner)"),
    Stage("embed", ("text",) + _TEXT_ENCODER_FIELDS, ("caption",), "02", lambda p: (p.embeddings,),
          "encode every training caption once with the text encoder"),
    Stage("backbone", ("backbone", "text.max_length", "data.generic_prompt"), ("caption",), "03",
          lambda p: (p.backbone, p.backbone_loss),
          "pretrain the surrogate backbone (or check the pretrained one loads)"),
    *(model_stage(m) for m in MODELS.values()),
    Stage("generate", ("generate", "curve_methods", "classify.mvc_modes"),
          tuple(m.stage for m in MODELS.values()), "04",
          lambda p: (p.synthetic, p.generate_units, p.finetune_previews),
          "generate the synthetic sets (Figure 4) of every unit, sharded over accelerate processes",
          unit_outputs=lambda p: (p.synthetic,)),
    Stage("metrics", ("metrics", "seed", *(f"classify.{f}" for f in JUDGE_RECIPE)), ("generate",), "04",
          lambda p: (p.image_metrics,), "FID, KID, label fidelity and diversity of every synthetic set"),
    Stage("classify", ("classify", "replicates", "curve_methods", "metrics.judge_splits", "metrics.judge_scored_on",
                       "metrics.judge_steps",
                       "metrics.judge_backbone", "seed"), ("generate",), "05", lambda p: (p.results,),
          "train the classifiers of every method and seed (of every shots level)"),
    Stage("report", ("report", "data.shots"), ("classify", "metrics"), "06", lambda p: (),
          "figures, tables and index.html"),
)
STAGE = {s.name: s for s in STAGES}
# stages that make one output per unit (shots level x replicate): done when every unit of the study is recorded; a
# unit added since (a new shots level or replicate) runs alone, since neither data.shots nor replicates is in their
# hashes (classify's holds replicates: seed i's replicate is i mod R)
PER_UNIT = frozenset([m.stage for m in MODELS.values()] + ["generate", "metrics", "classify"])


def notebook_stages(notebook: str) -> list[str]:
    """The stages a numbered notebook runs, in order."""
    return [s.name for s in STAGES if s.notebook == notebook]


def upstream(name: str) -> list[str]:
    """Every stage `name` depends on, directly or not, in run order."""
    found: set[str] = set()
    todo = list(STAGE[name].after)
    while todo:
        s = todo.pop()
        if s not in found:
            found.add(s)
            todo.extend(STAGE[s].after)
    return [s.name for s in STAGES if s.name in found]


def downstream(name: str) -> list[str]:
    """Every stage that depends on `name`, directly or not, in run order."""
    return [s.name for s in STAGES if name in upstream(s.name)]


def _value(dump: dict, dotted: str) -> Any:
    node = dump
    for part in dotted.split("."):
        node = node[part]
    return node


def _without(value: Any, path: str, ignores: tuple[str, ...]) -> Any:
    """`value` (the params at `path`) less the ignored fields inside it."""
    drop = [i[len(path) + 1:] for i in ignores if i.startswith(path + ".") and "." not in i[len(path) + 1:]]
    return {k: v for k, v in value.items() if k not in drop} if drop and isinstance(value, dict) else value


def reads_field(stage: Stage, dotted: str) -> bool:
    """True when `stage` declares that it reads the field `dotted` (or a section that holds it)."""
    if any(dotted == i or dotted.startswith(i + ".") for i in stage.ignores):
        return False
    return any(dotted == r or dotted.startswith(r + ".") or r.startswith(dotted + ".") for r in stage.reads)


def stage_hash(dump: dict, name: str) -> str:
    """A stable hash of the params `name` reads and of its upstream stages' hashes."""
    stage = STAGE[name]
    payload = {"reads": {r: _without(_value(dump, r), r, stage.ignores) for r in stage.reads},
               "after": [stage_hash(dump, u) for u in stage.after]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
