"""Views of a study: its folders, its stage hashes, and the units of the generative pipeline (shots level x
replicate), each a copy of the study with its own seeds and folders."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import PrivateAttr

from mvc.config.sections import Section
from mvc.paths import StudyPaths, resolve_path
from mvc.stages import stage_hash
from mvc.units import Unit

if TYPE_CHECKING:
    from mvc.config.study import StudyConfig


class UnitViews(Section):
    """What a `StudyConfig` answers besides its fields: paths, stage hashes, unit views."""

    # the unit of the generative pipeline this view of the study is for; None: the main unit
    _unit: Unit | None = PrivateAttr(None)
    _study_dump: dict | None = PrivateAttr(None)

    @property
    def paths(self) -> StudyPaths:
        runs = resolve_path(self.runs_root) if self.runs_root else None
        reports = resolve_path(self.reports_root) if self.reports_root else None
        return StudyPaths.for_study(self.study, runs, reports, self.unit_name)

    def stage_hash(self, stage: str) -> str:
        """A stable hash of the params `stage` reads (as the stage registry declares), upstream stages' included;
        the same for every unit of the study."""
        return stage_hash(self._study_dump or self.model_dump(mode="json"), stage)

    # -- units: (shots level, replicate) of the generative pipeline ------------------------------------------

    @property
    def current_unit(self) -> Unit:
        """The unit this view is for: the main one (the largest shots level, replicate 0) outside a unit view."""
        return self._unit or Unit(self.data.max_shots, 0)

    @property
    def shots_now(self) -> int | None:
        """The labelled images per class this view trains on (the largest level outside a unit)."""
        return self.current_unit.shots

    @property
    def replicate(self) -> int:
        return self.current_unit.replicate

    @property
    def unit_name(self) -> str | None:
        """`shots-<n>_rep-<r>`, or None for the main unit (the largest level, replicate 0: the study's own paths)."""
        unit = self.current_unit
        return None if unit == Unit(self.data.max_shots, 0) else unit.name

    def unit(self, shots: int | None, replicate: int = 0) -> StudyConfig:
        """The study as unit (shots, replicate) sees it: its own fine-tuning and generation folders and seeds
        (finetune.seed + r, generate.seed + r) and a train split of `shots` images per class."""
        if shots not in self.data.shot_levels or not 0 <= replicate < self.replicates:
            raise ValueError(f"no unit (shots={shots}, replicate={replicate}) in this study: data.shots "
                             f"{self.data.shot_levels}, replicates {self.replicates}")
        unit = Unit(shots, replicate)
        view = self.model_copy(update={
            "finetune": self.finetune.model_copy(update={"seed": unit.seed(self.finetune.seed)}),
            "generate": self.generate.model_copy(update={"seed": unit.seed(self.generate.seed)})})
        view._unit, view._study_dump = unit, self._study_dump or self.model_dump(mode="json")
        return view

    def units(self) -> list[StudyConfig]:
        """Every unit, the main one first: each shots level (largest first) x each replicate."""
        return [self.unit(s, r) for s in reversed(self.data.shot_levels) for r in range(self.replicates)]
