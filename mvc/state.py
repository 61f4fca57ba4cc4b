"""Stage records and the one stage wrapper: skip a stage whose params are unchanged, delete the outputs that
other params made, time it, record it.

A record `runs/<study>/stages/<stage>.json` holds the params hash a stage finished with; `<stage>.started`
holds the hash of a run in progress, so an interrupted stage resumes with the same params and starts over
with others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mvc.config import StudyConfig
from mvc.io import ensure_writable, write_json
from mvc.lock import study_lock
from mvc.runtime import peak_memory, process_state, release_memory, reset_peak_memory, set_threads
from mvc.stages import PER_UNIT, STAGE, upstream
from mvc.units import Unit

log = logging.getLogger(__name__)


class MissingStageOutput(RuntimeError):
    """A stage needs the output of an earlier stage that has not run (or ran with other params)."""


def _record(cfg: StudyConfig, stage: str) -> Path:
    return cfg.paths.stages / f"{stage}.json"


def output_paths(cfg: StudyConfig, stage: str) -> list[Path]:
    """The work files and folders `stage` writes, as the registry declares them."""
    return list(STAGE[stage].outputs(cfg.paths))


def stage_info(cfg: StudyConfig, stage: str) -> dict:
    record = _record(cfg, stage)
    return json.loads(record.read_text()) if record.exists() else {}


class DamagedOutput(RuntimeError):
    """A finished stage's output changed or vanished afterwards; the message names it and the fix."""


FORCE_ENV = "MVC_FORCE"  # set by `mvc study --force` for its notebooks: recompute their stages from scratch
_verified: set[tuple[str, str]] = set()  # (record path, finished) checked in this process


def fingerprint(path: Path) -> dict:
    """What a finished output looked like: size, time and checksum of a file (row count of a CSV); for a folder,
    each file's size, time and checksum (`entries`), and a digest over the contents."""
    if path.is_file():
        st = path.stat()
        out = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256(path)}
        if path.suffix == ".csv":
            out["rows"] = max(0, path.read_bytes().count(b"\n") - 1)
        return out
    entries = {}
    for f in sorted(path.rglob("*")):
        if f.is_file():
            st = f.stat()
            entries[str(f.relative_to(path))] = [st.st_size, st.st_mtime_ns, _sha256(f)]
    return {"files": len(entries), "bytes": sum(e[0] for e in entries.values()),
            "digest": hashlib.sha256(json.dumps({k: e[2] for k, e in entries.items()}).encode()).hexdigest(),
            "entries": entries}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_problems(folder: Path, entries: dict[str, list]) -> list[str]:
    """The files of `folder` that are missing, new, or whose contents changed since `entries` was recorded (a file
    whose size and time are as recorded is not read again)."""
    problems, seen = [], set()
    for f in sorted(folder.rglob("*")):
        if not f.is_file():
            continue
        rel = str(f.relative_to(folder))
        seen.add(rel)
        was = entries.get(rel)
        if was is None:
            problems.append(f"{f} appeared after the stage finished")
            continue
        st = f.stat()
        if [st.st_size, st.st_mtime_ns] != was[:2] and _sha256(f) != was[2]:
            rows = max(0, f.read_bytes().count(b"\n") - 1)
            what = f"{rows} rows now" if f.suffix == ".csv" else f"{st.st_size} bytes now, recorded {was[0]}"
            problems.append(f"{f} changed after the stage finished ({what})")
    problems += [f"{folder / rel} is missing" for rel in sorted(set(entries) - seen)]
    return problems


def output_problems(cfg: StudyConfig, stage: str, info: dict) -> list[str]:
    """How the outputs of a finished stage differ from what its record says it left, file by file."""
    problems = []
    for rel, was in info.get("checks", {}).items():
        path = cfg.paths.run / rel
        if not path.exists():
            problems.append(f"{path} is missing")
            continue
        if path.is_dir() and "entries" in was:
            problems += folder_problems(path, was["entries"])
            continue
        if path.is_file() and path.stat().st_size == was.get("size") and path.stat().st_mtime_ns == was.get("mtime_ns"):
            continue  # untouched since the stage finished
        now = fingerprint(path)
        keys = ("sha256",) if path.is_file() else ("digest",)
        if any(now.get(k) != was.get(k) for k in keys):
            detail = (f"{now.get('rows')} rows, recorded {was.get('rows')}" if "rows" in was else
                      f"{now.get('files', now.get('size'))} now, recorded {was.get('files', was.get('size'))}")
            problems.append(f"{path} changed after the stage finished ({detail})")
    return problems


def is_done(cfg: StudyConfig, stage: str) -> bool:
    """True when `stage` finished with the current params hash and its outputs are as it left them; a damaged
    output raises `DamagedOutput` naming it and the fix."""
    record = _record(cfg, stage)
    info = stage_info(cfg, stage)
    if info.get("hash") != cfg.stage_hash(stage):
        return False
    if stage in PER_UNIT and (not set(unit_labels(cfg)) <= set(info.get("unit_names", []))
                              or info.get("main_unit") != main_unit(cfg)):
        return False  # a unit added since (a level, a replicate): the stage runs the new units only
    key = (str(record), info.get("finished", ""))
    if key in _verified:
        return True
    problems = output_problems(cfg, stage, info)
    if problems:
        nb = STAGE[stage].notebook
        raise DamagedOutput(f"stage '{stage}' finished, but " + "; ".join(problems) + ". Recompute it from scratch "
                            f"with `mvc {stage} PARAMS --force` (or `mvc study PARAMS --notebooks {nb} --force`)")
    _verified.add(key)
    return True


def unit_labels(cfg: StudyConfig) -> list[str]:
    """The study's units (shots level x replicate) as stage records name them: `shots-<n>_rep-<r>`."""
    return [u.current_unit.name for u in cfg.units()]


def main_unit(cfg: StudyConfig) -> str:
    """The name of the unit whose outputs are the study's own (the largest level, replicate 0)."""
    return Unit(cfg.data.max_shots, 0).name


def move_main_unit(cfg: StudyConfig, stage: str, was: str) -> None:
    """The largest shots level changed since `stage` last ran: move the outputs of the old main unit `was` from the
    study's own folders to its unit folders, and those of the new main unit (if made before) the other way, so that
    each unit keeps what it made and nothing is recomputed or taken for another unit's."""
    spec = STAGE[stage]
    if spec.unit_outputs is None:
        return
    top = dataclasses.replace(cfg.paths, unit=None)
    record = _record(cfg, stage)

    def move(source, target) -> None:
        for a, b in zip(spec.unit_outputs(source), spec.unit_outputs(target)):
            if a.exists():
                if b.exists():
                    shutil.rmtree(b) if b.is_dir() else b.unlink()
                b.parent.mkdir(parents=True, exist_ok=True)
                a.rename(b)

    if was:  # "": an interrupted move already emptied the study's own folders
        move(top, dataclasses.replace(top, unit=was))
        write_json(record, {**stage_info(cfg, stage), "main_unit": ""})
        started = cfg.paths.stages / f"{stage}.started"
        if started.exists():
            started.write_text(f"{_read_started(started)[0]}\n")
    move(dataclasses.replace(top, unit=main_unit(cfg)), top)
    log.info("stage %s: the main unit is now %s; %s's outputs moved to its unit folders", stage, main_unit(cfg), was)


def mark_done(cfg: StudyConfig, stage: str, seconds: float, extra: dict | None = None) -> None:
    outputs = [p for p in output_paths(cfg, stage) if p.exists()]
    checks = {str(p.relative_to(cfg.paths.run)): fingerprint(p) for p in outputs}
    units = {"unit_names": unit_labels(cfg), "main_unit": main_unit(cfg)} if stage in PER_UNIT else {}
    write_json(_record(cfg, stage), {"stage": stage, "hash": cfg.stage_hash(stage), "seconds": round(seconds, 2),
                                     "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "checks": checks,
                                     **units, **(extra or {})})
    (cfg.paths.stages / f"{stage}.started").unlink(missing_ok=True)


def _read_started(started: Path) -> tuple[str | None, str | None]:
    """The params hash of a run in progress and, for a per-unit stage, the main unit its outputs at the top belong
    to (the record that would say so is deleted when a run starts)."""
    if not started.exists():
        return None, None
    lines = started.read_text().split()
    return (lines[0] if lines else None), (lines[1] if len(lines) > 1 else None)


def delete_stale_outputs(cfg: StudyConfig, stage: str, force: bool = False) -> None:
    """Before running `stage`: delete the outputs that other params made (all of them with `force`), and the
    temporary files an interrupted write left; keep those of an interrupted run with the current params, so
    that it resumes."""
    current = cfg.stage_hash(stage)
    started = cfg.paths.stages / f"{stage}.started"
    started_with, started_main = _read_started(started)
    info = stage_info(cfg, stage)
    finished_with = info.get("hash")
    was_main = info.get("main_unit", started_main)  # an interrupted run's main unit, when it left no record
    for out in output_paths(cfg, stage):
        for tmp in out.parent.glob(f".{out.name}.*"):  # atomic_path / atomic_dir temporaries
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    if force or (started_with not in (None, current)) or (finished_with not in (None, current)):
        log.info("stage %s: %s, deleting its old outputs and recomputing", stage,
                 "--force" if force else "params changed")
        for out in output_paths(cfg, stage):
            if out.is_dir():
                shutil.rmtree(out)
            elif out.exists():
                out.unlink()
    elif stage in PER_UNIT and was_main not in (None, main_unit(cfg)):
        move_main_unit(cfg, stage, was_main)
    _record(cfg, stage).unlink(missing_ok=True)
    started.parent.mkdir(parents=True, exist_ok=True)
    started.write_text(current + (f"\n{main_unit(cfg)}" if stage in PER_UNIT else ""))


def require(cfg: StudyConfig, stage: str) -> None:
    """Raise a clear error if `stage` has not completed with the current params, naming the first stage to run."""
    if is_done(cfg, stage):
        return
    first = next(s for s in upstream(stage) + [stage] if not is_done(cfg, s))
    nb = STAGE[first].notebook
    raise MissingStageOutput(
        f"stage '{stage}' has no up-to-date output for study '{cfg.study}' in {cfg.paths.run}; the first stage to "
        f"run is '{first}' (`mvc {first} PARAMS`, `mvc study PARAMS --notebooks {nb}-06` or notebook {nb} onwards)")


def stage(name: str, reader: Callable[[StudyConfig], Any], distributed: bool = False) -> Callable:
    """Wrap the body of stage `name` (declared in `mvc.stages`): skip it when up to date (returning `reader(cfg)`,
    its result read from disk); else delete stale outputs, check the stages before it, set threads, time the body
    and record it as done.

    The body returns a dict of facts to record, or None when it stopped early on purpose (`max_steps` and
    the like): the stage is then not marked done and the next call resumes it. With `distributed`, only the
    main accelerate process deletes and records, between barriers.
    """
    spec = STAGE[name]

    def wrap(body: Callable[..., dict | None]) -> Callable[..., Any]:
        @functools.wraps(body)
        def run(cfg: StudyConfig, *args, force: bool = False, **kwargs) -> Any:
            force = force or bool(os.environ.get(FORCE_ENV))
            dist = process_state(cfg.device) if distributed else None
            main = dist is None or dist.is_main_process
            if main:
                ensure_writable(cfg.paths.run, "runs_root")
            with study_lock(cfg.paths.run) if main else contextlib.nullcontext():
                return _run(cfg, dist, main, force, args, kwargs)

        def _run(cfg: StudyConfig, dist, main: bool, force: bool, args: tuple, kwargs: dict) -> Any:
            if not force and is_done(cfg, name):
                for before in upstream(name):  # a damaged earlier output is named, not silently built upon
                    is_done(cfg, before)
                log.info("stage %s: up to date (params hash %s), skipping", name, cfg.stage_hash(name))
                return reader(cfg)
            if main:
                delete_stale_outputs(cfg, name, force)
            if dist is not None:
                dist.wait_for_everyone()
            for before in spec.after:
                require(cfg, before)
            set_threads()
            reset_peak_memory()
            start = time.time()
            try:
                facts = body(cfg, *args, **kwargs)
            finally:
                release_memory()  # the stage's models leave with it: the next stage in this process starts clean
            if facts is None:
                return None
            facts = {**facts, **peak_memory()}
            if dist is not None:
                dist.wait_for_everyone()
            if main:
                mark_done(cfg, name, time.time() - start, facts)
            if dist is not None:
                dist.wait_for_everyone()
            return reader(cfg)

        run.stage_name = name  # what `mvc.pipeline` collects the stage functions by
        return run

    return wrap
