"""What the first cell of every numbered notebook does, in one call."""

from __future__ import annotations

import logging

from mvc.config import StudyConfig, load_config
from mvc.paths import shown
from mvc.resources import check_memory


def open_study(params: str, overrides: list[str]) -> StudyConfig:
    """Log to the notebook, load the study's params (with overrides), check that its stages fit in memory and say
    where it works."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    cfg = load_config(params, overrides)
    check_memory(cfg)  # a setting that cannot fit the card (or this CPU) is refused here, naming what to lower
    print(f"study {cfg.study}: work in {shown(cfg.paths.run)}, report in {shown(cfg.paths.report)}")
    return cfg
