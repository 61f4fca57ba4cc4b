"""The study's vocabulary is declared once: a new augmentation and a new synthetic set, each registered in a
fixture and named in a params override, reach the grid, results, paired tests, metrics and the report with no
other edit."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from mvc import registry
from tests.conftest import run_until, smoke_config


def _invert(c) -> list:
    from torchvision.transforms import v2

    return [v2.RandomInvert(p=0.5)]


@pytest.fixture
def toy_vocabulary():
    """A toy classical augmentation, a toy synthetic set (the backbone at twice the text guidance) and the method
    that trains on it: three declarations, removed again after the test."""
    added = [
        (registry.METHODS, registry.register_method(registry.Method("toy_invert", "classical", _invert))),
        (registry.SETS, registry.register_set(registry.SyntheticSet("toy_guided", "backbone", "text",
                                                                    guidance=6.0))),
        (registry.METHODS, registry.register_method(registry.Method("toy_guided", "synthetic",
                                                                    sets=lambda c: ("toy_guided",)))),
    ]
    yield
    for table, spec in added:
        table.pop(spec.name)


def test_an_unregistered_name_is_refused_with_the_registered_ones(tmp_path):
    from mvc.config import ConfigError

    with pytest.raises(ConfigError, match="toy_invert.*not registered.*randaugment"):
        smoke_config(tmp_path, "classify.methods=[none, toy_invert]")


@pytest.mark.slow
def test_a_registered_augmentation_and_synthetic_set_reach_every_stage(toy_vocabulary, smoke_generated, tmp_path):
    from mvc import artifacts, classifiers, classify, statistics
    from mvc.grid import grid

    cfg = smoke_config(tmp_path, "generate.sets=[sd_naive, toy_guided]", "generate.modes=[coarse]",
                       "classify.methods=[none, toy_invert, sd_naive, toy_guided, mvc]")
    shutil.copytree(smoke_generated.paths.run, cfg.paths.run)  # data to fine-tuning are the same study's
    run_until(cfg, "report")

    # generation: the toy set is made with its own guidance, from the sd_naive set's prompts and noise
    toy, naive = (artifacts.load_manifest(cfg, n) for n in ("toy_guided", "sd_naive"))
    assert len(toy) == len(naive) and (toy["seed"].to_numpy() == naive["seed"].to_numpy()).all()
    x_toy, _ = artifacts.load_synthetic(cfg, "toy_guided")
    x_naive, _ = artifacts.load_synthetic(cfg, "sd_naive")
    # another guidance, other images: with the same guidance, prompts and noise the two sets would be equal to the bit
    # (the smoke backbone's tiny random text encoder moves them by a fraction of a grey level on average)
    assert np.abs(x_toy.astype(int) - x_naive.astype(int)).mean() > 0.05

    # classification: the toy method sees its synthetic images; the toy augmentation changes every image
    spec = next(s for s in grid(cfg) if s.method == "toy_guided")
    assert spec.synthetic_sets == ("toy_guided",)
    data = classify.load_classification_data(cfg, ["toy_guided"])
    seen = []
    classifiers.train_classifier(data, spec, cfg.classify, cfg.data.resolution,
                                 on_batch=lambda phase, x, used: seen.append(used.sum()))
    assert sum(seen) > 0
    assert any(type(t).__name__ == "RandomInvert"
               for t in classifiers.method_transform("toy_invert", cfg.classify, 16).transforms)

    results = artifacts.load_results(cfg)
    share = results.groupby("method")["synthetic_share"].first()
    assert share["toy_guided"] > 0 and share["toy_invert"] == 0
    tests = statistics.paired_tests(results, "mvc")
    assert {"toy_invert", "toy_guided"} <= set(tests["baseline"])  # both are baselines of MVC, none is MVC

    # metrics and report
    metrics = artifacts.load_image_metrics(cfg)
    assert "toy_guided" in set(metrics["synthetic_set"])
    table = pd.read_csv(cfg.paths.tables / "classification.csv")
    assert list(table["method"]) == ["none", "sd_naive", "mvc", "toy_invert", "toy_guided"]  # registry order
    assert "toy_guided" in (cfg.paths.tables / "image_metrics.md").read_text()
    assert "toy_invert" in cfg.paths.index.read_text()
