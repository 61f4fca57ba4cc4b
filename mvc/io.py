"""Atomic file writes: a temporary file beside the target, then a rename, so nothing is left half-written."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

_UMASK = os.umask(0)
os.umask(_UMASK)


class StudyPathError(RuntimeError):
    """A study folder that cannot be written; the message names it and the fix."""


def ensure_writable(folder: Path, field: str) -> Path:
    """Create `folder` if needed and check that a file can be written in it, before any work starts."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise StudyPathError(f"cannot write to {folder} ({err.strerror or err}); make it writable or free space there, "
                             f"or point {field} at another folder (params file or --set {field}=PATH)") from None
    return folder


@contextlib.contextmanager
def atomic_path(target: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or target.suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the target the usual permissions
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: Path, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(target: Path, frame: pd.DataFrame) -> None:
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False)


def append_rows(target: Path, frame: pd.DataFrame) -> None:
    """Append complete rows to a CSV (header on creation), flushed and synced, for resumable stages."""
    target.parent.mkdir(parents=True, exist_ok=True)
    new = not target.exists() or target.stat().st_size == 0
    with open(target, "a", newline="") as fh:
        frame.to_csv(fh, index=False, header=new)
        fh.flush()
        os.fsync(fh.fileno())


def read_rows(target: Path) -> pd.DataFrame | None:
    """Read an append-only CSV, dropping a last line cut short by an interruption."""
    if not target.exists() or target.stat().st_size == 0:
        return None
    raw = target.read_bytes()
    if not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
        with atomic_path(target) as tmp:
            tmp.write_bytes(raw)
    if not raw.strip():
        return None
    return pd.read_csv(target, keep_default_na=False)


# -- resumable tables written by several processes: each appends to its own part file beside the final table, and
# the parts are folded into it when every process is done (an interrupted run resumes from final + parts)


def part_file(final: Path, *index: int) -> Path:
    """The part file of process `index` (and worker) of `final`: `.<stem>-part-<i>[-<w>].csv` beside it."""
    return final.with_name(f".{final.stem}-part-{'-'.join(map(str, index))}.csv")


def part_files(final: Path) -> list[Path]:
    """The part files of `final` written so far."""
    return sorted(final.parent.glob(f".{final.stem}-part-*.csv"))


def rows_and_parts(final: Path) -> list[pd.DataFrame]:
    """The rows of `final` and of its part files, each file's complete rows (those it has)."""
    return [r for f in [final, *part_files(final)] if (r := read_rows(f)) is not None]


def merge_parts(final: Path, key: list[str], columns: list[str], sort: str | None = None) -> int:
    """Fold the part files into `final` (a row recorded twice under `key` counts once, the first kept), then
    delete them; returns the row count."""
    frames = rows_and_parts(final)
    count = 0
    if frames:
        merged = pd.concat(frames).drop_duplicates(key, keep="first")
        merged = merged.sort_values(sort) if sort else merged
        write_csv(final, merged[columns])
        count = len(merged)
    for f in part_files(final):
        f.unlink()
    return count


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `target`; it replaces `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
