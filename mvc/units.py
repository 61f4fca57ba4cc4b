"""A unit of the study design: one run of the generative pipeline, at one shots level, as one replicate."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Unit:
    """A shots level (labelled images per class; None: all of them) and a replicate. Shots stay an integer (or
    None) in the code; `label` and `name` are the forms written to files and folders."""

    shots: int | None
    replicate: int = 0

    @property
    def label(self) -> str:
        """The shots level as `results.csv` writes it: the count, or "all"."""
        return str(self.shots) if self.shots else "all"

    @property
    def name(self) -> str:
        """`shots-<n>_rep-<r>`: the folder of a unit other than the main one, under `runs/<study>/units/<stage>/`."""
        return f"shots-{self.label}_rep-{self.replicate}"

    def seed(self, base: int) -> int:
        """Replicate r's seed of a stage whose own seed is `base` (fine-tuning, generation)."""
        return base + self.replicate


def parse_shots(value) -> int | None:
    """A shots level read back from a file ("10", 10 or "all") as the code holds it (10, or None for all)."""
    return None if str(value) in ("all", "None", "nan", "<NA>") else int(value)
