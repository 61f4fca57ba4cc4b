"""What the first cell of every numbered notebook does, in one call."""

from __future__ import annotations

import logging

from mvc.config import StudyConfig, load_config
from mvc.paths import shown
from mvc.resources import check_memory

# Loggers that say INFO for every file of every checkpoint saved or loaded (accelerate's `save_state`): quiet in
# a notebook, where they would fill a red stderr block; their warnings still show.
QUIET_AT_INFO = ("accelerate.accelerator", "accelerate.checkpointing")


def open_study(params: str, overrides: list[str]) -> StudyConfig:
    """Log to the notebook, load the study's params (with overrides), check that its stages fit in memory and say
    where it works."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    for name in QUIET_AT_INFO:
        logging.getLogger(name).setLevel(logging.WARNING)
    cfg = load_config(params, overrides)
    check_memory(cfg)  # a setting that cannot fit the card (or this CPU) is refused here, naming what to lower
    print(f"study {cfg.study}: work in {shown(cfg.paths.run)}, report in {shown(cfg.paths.report)}")
    return cfg


def show_items(cfg: StudyConfig, keys: list[str]) -> None:
    """Show the report items `keys` the study has, each under its key, and close their figures (so Jupyter does
    not show them a second time at the end of the cell)."""
    import matplotlib.pyplot as plt
    from IPython.display import Markdown, display

    from mvc.report_items import draw  # deferred: the report's plotting stack is needed only here

    for key, item in draw(cfg, keys).items():
        display(Markdown(f"**{key}**"), item)
        if isinstance(item, plt.Figure):
            plt.close(item)
