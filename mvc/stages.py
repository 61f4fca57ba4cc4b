"""The stage registry: every stage of a study declared once, with what it reads, needs and writes.

Each `Stage` names its function and its reader ("module:function", imported when used), the params it reads
(a section such as `caption`, or a field such as `text.max_length`), the stages whose outputs it reads, the
notebook that runs it, and the work files it writes. Run order, stage hashes, the CLI's subcommands and the
study runner's notebook table are all derived from this one list (DVC's `deps`/`params`/`outs`, in Python).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Callable

# Fields that say where a study runs, not what it computes: they are in no stage's hash.
LOCATION_FIELDS = ("study", "runs_root", "reports_root", "device")


@dataclass(frozen=True)
class Stage:
    name: str
    entry: str  # "module:function" of the stage function: f(cfg, show_progress=True, ...)
    reader: str  # "module:function" that loads the stage's result from disk: f(cfg)
    reads: tuple[str, ...]  # params read: a section ("caption") or a dotted field ("text.max_length")
    after: tuple[str, ...]  # stages whose outputs this one reads
    notebook: str  # the numbered notebook that runs it
    outputs: tuple[str, ...]  # `StudyPaths` attributes it writes (deleted when its params change)
    summary: str  # one line for `mvc --help`

    @property
    def function(self) -> Callable[..., Any]:
        return _resolve(self.entry)

    def load(self, cfg) -> Any:
        """The stage's result, read back from its outputs."""
        return _resolve(self.reader)(cfg)


def _resolve(ref: str) -> Callable[..., Any]:
    module, name = ref.split(":")
    return getattr(import_module(module), name)


NOTEBOOKS = {
    "01": "01_data_preparation.ipynb",
    "02": "02_captioning.ipynb",
    "03": "03_mvc_finetuning.ipynb",
    "04": "04_generation.ipynb",
    "05": "05_classification.ipynb",
    "06": "06_figures_tables.ipynb",
}

# The surrogate's text encoder is built from these fields (a pretrained backbone's from `backbone.model`).
_TEXT_ENCODER_FIELDS = ("backbone.kind", "backbone.model", "backbone.revision", "backbone.surrogate.text_hidden_size",
                        "backbone.surrogate.text_layers", "backbone.surrogate.text_heads", "backbone.surrogate.seed")

STAGES: tuple[Stage, ...] = (
    Stage("data", "mvc.data:prepare_dataset", "mvc.artifacts:load_splits", ("data", "seed"), (), "01",
          ("splits", "images", "skipped"), "read the dataset, make seeded splits, cache the images"),
    Stage("caption", "mvc.captioning:caption_dataset", "mvc.artifacts:load_captions",
          ("caption", "data.prompt_template"), ("data",), "02", ("captions",),
          "caption the images (BLIP-2 or the offline attribute captioner)"),
    Stage("embed", "mvc.embed:embed_captions", "mvc.artifacts:load_caption_embeddings",
          ("text",) + _TEXT_ENCODER_FIELDS, ("caption",), "02", ("embeddings",),
          "encode every training caption once with the text encoder"),
    Stage("backbone", "mvc.backbone:prepare_backbone", "mvc.artifacts:backbone_source",
          ("backbone", "text.max_length", "data.generic_prompt"), ("caption",), "03", ("backbone", "backbone_loss"),
          "pretrain the surrogate backbone (or check the pretrained one loads)"),
    Stage("finetune", "mvc.finetune:finetune", "mvc.artifacts:mvc_model_path", ("finetune", "replicates"),
          ("embed", "backbone"), "03", ("mvc_model", "finetune_work", "finetune_units"),
          "MVC fine-tuning (Figure 3), under accelerate, for every shots level and replicate"),
    Stage("finetune_text", "mvc.finetune:finetune_text_only", "mvc.artifacts:text_model_path",
          ("finetune", "replicates", "curve_methods", "classify.mvc_modes", "generate.finetuned"),
          ("embed", "backbone"), "03", ("text_model", "text_finetune_work", "text_finetune_units"),
          "the sd_finetuned baseline: the backbone fine-tuned text-only (when generate.finetuned)"),
    Stage("finetune_nomix", "mvc.finetune:finetune_without_mixing", "mvc.artifacts:nomix_model_path",
          ("finetune", "replicates", "curve_methods", "classify.mvc_modes", "generate.nomix_trained"),
          ("embed", "backbone"), "03", ("nomix_model", "nomix_finetune_work", "nomix_finetune_units"),
          "the no-mixing-in-training ablation: MVC fine-tuned on own captions (when generate.nomix_trained)"),
    Stage("generate", "mvc.generate:generate_all", "mvc.artifacts:load_manifests",
          ("generate", "replicates", "curve_methods", "classify.mvc_modes"),
          ("finetune", "finetune_text", "finetune_nomix"), "04", ("synthetic", "generate_units"),
          "generate the synthetic sets (Figure 4) of every unit, sharded over accelerate processes"),
    Stage("metrics", "mvc.metrics:image_metrics", "mvc.artifacts:load_image_metrics",
          ("metrics", "classify", "seed"), ("generate",), "04", ("image_metrics",),
          "FID, KID, label fidelity and diversity of every synthetic set"),
    Stage("classify", "mvc.classify:classify_all", "mvc.artifacts:load_results",
          ("classify", "replicates", "curve_methods"), ("generate",), "05", ("results",),
          "train the classifiers of every method and seed (of every shots level)"),
    Stage("report", "mvc.report:build_report", "mvc.artifacts:report_index", ("report",), ("classify", "metrics"),
          "06", (), "figures, tables and index.html"),
)
STAGE = {s.name: s for s in STAGES}


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


def reads_field(stage: Stage, dotted: str) -> bool:
    """True when `stage` declares that it reads the field `dotted` (or a section that holds it)."""
    return any(dotted == r or dotted.startswith(r + ".") or r.startswith(dotted + ".") for r in stage.reads)


def stage_hash(dump: dict, name: str) -> str:
    """A stable hash of the params `name` reads and of its upstream stages' hashes."""
    stage = STAGE[name]
    payload = {"reads": {r: _value(dump, r) for r in stage.reads},
               "after": [stage_hash(dump, u) for u in stage.after]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
