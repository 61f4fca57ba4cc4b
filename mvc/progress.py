"""Progress bars for every long loop: tqdm in a terminal or JupyterLab; in a log that is not a terminal (CI,
`nohup`, a pipe), whole lines, at most one per tenth of the total or per 30 seconds; under `mvc study`, a small JSON
file that the study runner turns into a bar (or those lines), so the executed notebooks carry no progress output."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm as auto_tqdm
from tqdm.std import tqdm as std_tqdm

PROGRESS_ENV = "MVC_PROGRESS_FILE"  # set by the study runner for the notebook kernel it starts


class FileProgress(std_tqdm):
    """A tqdm that draws nothing and writes its state (desc, n, total, rate) to a file at each refresh."""

    def __init__(self, *args, path: Path, **kwargs):
        self._path = Path(path)
        kwargs.update(file=open(os.devnull, "w"), mininterval=0.5)  # noqa: SIM115 - closed in close()
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None) -> bool:
        d = self.format_dict
        state = {"desc": d.get("prefix") or "", "n": d["n"], "total": d["total"], "elapsed": d["elapsed"],
                 "rate": d.get("rate"), "unit": d.get("unit", "it"), "time": time.time()}
        tmp = self._path.with_name(self._path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(state))
            os.replace(tmp, self._path)
        except OSError:
            pass  # progress is a courtesy; never fail a stage over it
        return True

    def close(self) -> None:
        fp = self.fp
        super().close()
        fp.close()


class LogProgress(std_tqdm):
    """A tqdm for a log that is not a terminal: a whole line (no carriage returns) when the count reaches the next
    tenth of the total, when `every_s` seconds have passed since the last line (the only rule without a total), and
    at the end."""

    def __init__(self, *args, every_s: float = 30.0, **kwargs):
        self._every_s, self._last_t, self._last_tenth, self._printed_n = every_s, None, -1, None
        kwargs.update(mininterval=0, miniters=1)
        kwargs.setdefault("file", sys.stderr)
        super().__init__(*args, **kwargs)

    def _line(self) -> None:
        d = self.format_dict
        shape = {} if d.get("bar_format") else {"ncols": 0}  # the stats alone, unless a format was asked for
        self.fp.write(self.format_meter(**{**d, **shape}).strip() + "\n")
        self.fp.flush()
        self._last_t, self._printed_n = time.monotonic(), d["n"]
        self._last_tenth = int(10 * d["n"] / d["total"]) if d["total"] else self._last_tenth

    def display(self, msg=None, pos=None) -> bool:
        n, total = self.n, self.total
        tenth = int(10 * n / total) if total else None
        if (self._last_t is None or time.monotonic() - self._last_t >= self._every_s
                or (tenth is not None and tenth > self._last_tenth)) and n != self._printed_n:
            self._line()
        return True

    def clear(self, nolock: bool = False) -> None:
        pass  # nothing to erase: every line is final

    def moveto(self, n: int) -> None:
        pass

    def close(self) -> None:
        if self.disable:
            return
        if self.n != self._printed_n:
            self._line()
        self.disable = True
        self._decr_instances(self)


def _in_jupyter() -> bool:
    """True inside a Jupyter kernel (whose streams are not terminals, but draw tqdm's widget)."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return bool(shell) and "IPKernelApp" in getattr(shell, "config", {})


def bar(iterable=None, **kwargs):
    """tqdm's bar in a terminal or a notebook; `LogProgress`'s lines in any other log (stderr not a terminal)."""
    if kwargs.get("disable") or _in_jupyter() or sys.stderr.isatty():
        return auto_tqdm(iterable, **kwargs)
    return LogProgress(iterable, **kwargs)


def progress(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", disable: bool = False,
             initial: int = 0):
    """A progress bar over `iterable` (or a manual one with `total`), wherever the code runs."""
    target = os.environ.get(PROGRESS_ENV)
    if target and not disable:
        return FileProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, path=Path(target))
    return bar(iterable, total=total, desc=desc, unit=unit, disable=disable, initial=initial)


def quiet_library_bars() -> None:
    """Under `mvc study`, turn off the model-loading bars of transformers and diffusers (they would flood the
    executed notebooks); elsewhere leave them as the user has them."""
    if os.environ.get(PROGRESS_ENV):
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        diffusers_logging.disable_progress_bar()
