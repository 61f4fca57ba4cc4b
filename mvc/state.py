"""Stage records: which params hash produced a stage's outputs, so unchanged stages skip and changed ones redo."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from mvc.config import STAGES, StudyConfig
from mvc.io import write_json

log = logging.getLogger(__name__)


class MissingStageOutput(RuntimeError):
    """A stage needs the output of an earlier stage that has not run (or ran with other params)."""


def _record(cfg: StudyConfig, stage: str) -> Path:
    return cfg.paths.stages / f"{stage}.json"


def is_done(cfg: StudyConfig, stage: str, outputs: list[Path] = ()) -> bool:
    """True when `stage` finished with the current params hash and its outputs are in place."""
    record = _record(cfg, stage)
    if not record.exists():
        return False
    info = json.loads(record.read_text())
    return info.get("hash") == cfg.stage_hash(stage) and all(Path(p).exists() for p in outputs)


def stage_info(cfg: StudyConfig, stage: str) -> dict:
    record = _record(cfg, stage)
    return json.loads(record.read_text()) if record.exists() else {}


def mark_done(cfg: StudyConfig, stage: str, seconds: float, extra: dict | None = None) -> None:
    write_json(_record(cfg, stage), {"stage": stage, "hash": cfg.stage_hash(stage), "seconds": round(seconds, 2),
                                     "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **(extra or {})})


def prepare(cfg: StudyConfig, stage: str, outputs: list[Path]) -> bool:
    """Before running `stage`: False if it can be skipped; else clear outputs made under other params.

    Outputs whose record carries the current hash are kept, so an interrupted stage resumes.
    """
    if is_done(cfg, stage, outputs):
        log.info("stage %s: up to date (params hash %s), skipping", stage, cfg.stage_hash(stage))
        return False
    info = stage_info(cfg, stage)
    started = cfg.paths.stages / f"{stage}.started"
    if started.exists() and started.read_text().strip() != cfg.stage_hash(stage) or info and info.get("hash") != cfg.stage_hash(stage):
        log.info("stage %s: params changed, recomputing", stage)
        for out in outputs:
            out = Path(out)
            if out.is_dir():
                shutil.rmtree(out)
            elif out.exists():
                out.unlink()
        _record(cfg, stage).unlink(missing_ok=True)
    started.parent.mkdir(parents=True, exist_ok=True)
    started.write_text(cfg.stage_hash(stage))
    return True


def require(cfg: StudyConfig, stage: str, outputs: list[Path] = ()) -> None:
    """Raise a clear error if `stage` has not completed with the current params."""
    if not is_done(cfg, stage, outputs):
        from mvc.study import STAGE_NOTEBOOK

        nb = STAGE_NOTEBOOK.get(stage, "")
        raise MissingStageOutput(
            f"stage '{stage}' has no up-to-date output for study '{cfg.study}' in {cfg.paths.run}: run it first "
            f"(`mvc study PARAMS --stages {nb[:2]}` or notebook {nb})"
        )


def downstream(stage: str) -> list[str]:
    """Stages that depend on `stage`, directly or not."""
    out = []
    for name, (_, ups) in STAGES.items():
        if stage in ups or any(u in out for u in ups):
            out.append(name)
    return out
