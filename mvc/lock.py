"""One exclusive lock per study (`runs/<study>/.lock`), so that two runs on one study never interleave their
writes. A second run fails at once, naming the process that holds the lock."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_ENV = "MVC_STUDY_LOCK"  # "<lock path>:<pid>" of a runner whose notebooks run under its lock
_held: dict[Path, int] = {}  # lock files this process holds, with a re-entry count


class StudyLocked(RuntimeError):
    """Another process is running a stage of the same study."""


def _inherited(path: Path) -> bool:
    """True when the study runner that started this process holds the lock for us."""
    owner = os.environ.get(LOCK_ENV, "")
    where, _, pid = owner.rpartition(":")
    if where != str(path) or not pid.isdigit():
        return False
    try:
        return path.read_text().strip() == pid
    except OSError:
        return False


@contextlib.contextmanager
def study_lock(run_dir: Path) -> Iterator[None]:
    """Hold the study's lock for the block (re-entrant in one process; inherited by the runner's kernels)."""
    path = Path(run_dir) / ".lock"
    if path in _held or _inherited(path):
        _held[path] = _held.get(path, 0) + 1
        try:
            yield
        finally:
            _held[path] -= 1
            if not _held[path]:
                del _held[path]
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")  # noqa: SIM115 - held open for the whole block
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        raise StudyLocked(f"study folder {run_dir} is in use by another mvc process (PID {holder}); wait for it to "
                          f"finish or stop it, then run again") from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    _held[path] = 1
    try:
        yield
    finally:
        del _held[path]
        fh.seek(0)
        fh.truncate()
        fh.flush()
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()
