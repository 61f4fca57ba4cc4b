"""The classifier grid of a study: every run it makes (shots level x method x seed, and the ablations), and what
identifies a run in `results.csv`. Read by the classify stage (what to train) and the report (which rows are the
study's current ones)."""

from __future__ import annotations

from mvc.artifacts import methods_at_level, shots_label
from mvc.classifiers import RunSpec
from mvc.config import StudyConfig
from mvc.registry import method_sets, mvc_set_names, role_of


def grid(cfg: StudyConfig) -> list[RunSpec]:
    """The main grid (every shots level x method x seed; seed number i paired with replicate i mod R) and, with
    `classify.ablation`, the ablation grid (on the largest level)."""
    c, g = cfg.classify, cfg.generate
    specs = []
    top = cfg.data.max_shots
    under_test = role_of("under_test")  # the ablations vary the method under test
    for shots in reversed(cfg.data.shot_levels):
        for method in methods_at_level(cfg.unit(shots)):
            sets = method_sets(method, c)
            specs += [RunSpec(method, s, "main", sets, c.p_synthetic, shots=shots, replicate=i % cfg.replicates)
                      for i, s in enumerate(c.seeds)]
    if c.ablation:
        ab_seeds = list(enumerate(c.seeds[: max(3, len(c.seeds) // 2)]))
        for mode in g.modes:
            if [mode] != list(c.mvc_modes):
                specs += [RunSpec(under_test, s, f"mode={mode}", mvc_set_names([mode]), c.p_synthetic, shots=top,
                                  replicate=i % cfg.replicates) for i, s in ab_seeds]
        for m in sorted({1, max(1, g.images_per_source // 2)} - {g.images_per_source}):
            specs += [RunSpec(under_test, s, f"M={m}", mvc_set_names(c.mvc_modes), c.p_synthetic, m, shots=top,
                              replicate=i % cfg.replicates) for i, s in ab_seeds]
        for p in sorted({0.25, 0.75, 1.0} - {c.p_synthetic}):
            specs += [RunSpec(under_test, s, f"p_synthetic={p}", mvc_set_names(c.mvc_modes), p, shots=top,
                              replicate=i % cfg.replicates) for i, s in ab_seeds]
    return specs


def run_key(spec: RunSpec) -> tuple:
    """What identifies a run in results.csv: (shots, variant, method, seed)."""
    return (shots_label(spec.shots), spec.variant, spec.method, int(spec.seed))
