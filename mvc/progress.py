"""Progress bars for every long loop: tqdm in a terminal or JupyterLab; under `mvc study`, a small JSON file that
the study runner turns into a bar in the terminal, so the executed notebooks carry no progress-bar output."""

from __future__ import annotations

import json
import os
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


def progress(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", disable: bool = False,
             initial: int = 0):
    """A progress bar over `iterable` (or a manual one with `total`), wherever the code runs."""
    target = os.environ.get(PROGRESS_ENV)
    if target and not disable:
        return FileProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, path=Path(target))
    return auto_tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, initial=initial)


def quiet_library_bars() -> None:
    """Under `mvc study`, turn off the model-loading bars of transformers and diffusers (they would flood the
    executed notebooks); elsewhere leave them as the user has them."""
    if os.environ.get(PROGRESS_ENV):
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        diffusers_logging.disable_progress_bar()
