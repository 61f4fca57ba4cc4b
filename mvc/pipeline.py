"""The stage functions, imported for real: the import graph the layout test reads is the graph that runs.

Each function is bound to its stage where it is defined (`@stage(name, reader=...)`); this module collects them
by that name and checks the collection against the stage table (`mvc.stages.STAGES`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mvc import backbone, captioning, classify, data, embed, finetune, generate, metrics, report
from mvc.stages import STAGES

_FUNCTIONS: dict[str, Callable[..., Any]] = {
    f.stage_name: f for f in (data.prepare_dataset, captioning.caption_dataset, embed.embed_captions,
                              backbone.prepare_backbone, *finetune.MODEL_STAGES.values(), generate.generate_all,
                              metrics.image_metrics, classify.classify_all, report.build_report)}
if set(_FUNCTIONS) != {s.name for s in STAGES}:  # a stage declared without a function, or the reverse
    raise ImportError(f"stage functions {sorted(_FUNCTIONS)} do not match the stage table {[s.name for s in STAGES]}")


def stage_function(name: str) -> Callable[..., Any]:
    """The function of stage `name`: f(cfg, show_progress=True, force=False, ...)."""
    return _FUNCTIONS[name]


def stage_functions() -> dict[str, Callable[..., Any]]:
    """Every stage's function, in run order."""
    return {s.name: _FUNCTIONS[s.name] for s in STAGES}
