"""The study's vocabulary is declared once: a new augmentation and a new synthetic set, each registered in a
fixture and named in a params override, reach the grid, results, paired tests, metrics and the report with no
other edit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mvc import registry
from tests.conftest import run_until, smoke_config


def _invert(c) -> list:
    from torchvision.transforms import v2

    return [v2.RandomInvert(p=0.5)]


class MirroredDigits:
    """A toy dataset format: scikit-learn's digits, each image mirrored left to right."""

    def __new__(cls, cfg):
        from PIL import ImageOps

        from mvc.datasets import DigitsReader

        reader = DigitsReader(cfg)
        read = reader.read
        reader.read = lambda item: ImageOps.mirror(read(item))
        return reader


def _side_captions(images: np.ndarray) -> list[str]:
    """A toy captioner: which half of an image is brighter."""
    half = images.shape[2] // 2
    return ["bright left" if im[:, :half].mean() > im[:, half:].mean() else "bright right" for im in images]


DRAWN: list[dict] = []


def _draw_few_steps(batch) -> np.ndarray:
    from mvc.samplers import draw_text

    DRAWN.append({"steps": batch.steps, "scheduler": type(batch.scheduler).__name__, "n": len(batch.seeds)})
    return draw_text(batch)


@pytest.fixture
def toy_vocabulary():
    """A toy dataset, a toy captioner, a toy classical augmentation, a toy synthetic set with its own sampler (two
    Euler steps at twice the text guidance, one image per source) and the method that trains on it: one declaration
    each, removed again after the test."""
    few_steps = registry.Sampler("toy_few_steps", _draw_few_steps, steps=1, scheduler="euler")
    added = [
        (registry.DATASETS, registry.register_dataset(registry.Dataset("toy_mirrored_digits", MirroredDigits))),
        (registry.CAPTIONERS, registry.register_captioner(registry.CaptionerSpec(
            "toy_sides", lambda cfg, device: _side_captions))),
        (registry.METHODS, registry.register_method(registry.Method("toy_invert", "classical", _invert))),
        (registry.SETS, registry.register_set(registry.SyntheticSet("toy_guided", "backbone", few_steps,
                                                                    guidance=6.0, images_per_source=1))),
        (registry.METHODS, registry.register_method(registry.Method("toy_guided", "synthetic",
                                                                    sets=lambda c: ("toy_guided",)))),
    ]
    DRAWN.clear()
    yield
    for table, spec in added:
        table.pop(spec.name)


def test_an_unregistered_name_is_refused_with_the_registered_ones(tmp_path):
    from mvc.config import ConfigError

    with pytest.raises(ConfigError, match="toy_invert.*not registered.*randaugment"):
        smoke_config(tmp_path, "classify.methods=[none, toy_invert]")


@pytest.mark.slow
def test_a_registered_dataset_captioner_sampler_and_method_reach_every_stage(toy_vocabulary, tmp_path):
    """The smoke study from scratch on a toy dataset, captioned by a toy captioner, with a toy set drawn by its own
    sampler and a toy augmentation: each declared once, named in params overrides, and nothing else edited."""
    from mvc import artifacts, classifiers, classify, statistics
    from mvc.datasets import DigitsReader
    from mvc.grid import grid

    cfg = smoke_config(tmp_path, "data.dataset=toy_mirrored_digits", "caption.backend=toy_sides",
                       "generate.sets=[sd_naive, toy_guided]", "generate.modes=[coarse]",
                       "classify.methods=[none, toy_invert, sd_naive, toy_guided, mvc]")
    run_until(cfg, "report")

    # data and captions: the toy reader's mirrored images, the toy captioner's words
    from PIL import ImageOps

    from mvc.imaging import to_array

    first = artifacts.load_splits(cfg).iloc[0]
    plain = DigitsReader(cfg.data)
    item = plain.items()[int(first["source"].split("#")[1])]
    d = cfg.data
    stored = artifacts.load_images(cfg)[int(first["image_id"])]
    assert np.array_equal(stored, to_array(ImageOps.mirror(plain.read(item)), d.resolution, d.channels))
    assert not np.array_equal(stored, to_array(plain.read(item), d.resolution, d.channels))
    captions = artifacts.load_captions(cfg)
    assert set(captions["caption"]) == {"bright left", "bright right"}

    # generation: the toy set is drawn by its own sampler (one Euler step, one image per source) from the sd_naive
    # set's prompts and noise, at its own guidance
    toy, naive = (artifacts.load_manifest(cfg, n) for n in ("toy_guided", "sd_naive"))
    assert len(toy) * cfg.generate.images_per_source == len(naive) and (toy["index"] == 0).all()
    first_naive = naive[naive["index"] == 0].set_index("source_image_id")["seed"]
    assert (toy.set_index("source_image_id")["seed"] == first_naive.loc[toy["source_image_id"]]).all()
    assert DRAWN and {(d["steps"], d["scheduler"]) for d in DRAWN} == {(1, "EulerDiscreteScheduler")}
    assert sum(d["n"] for d in DRAWN) == len(toy)

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


def test_roles_are_asked_for_not_names():
    """The report, selection, statistics and figures ask for roles; the last method registered with a role holds it,
    so a variant under test is one declaration (here: the paired tests follow it with no argument)."""
    assert (registry.role_of("reference"), registry.role_of("under_test"), registry.role_of("tuned_classical"),
            registry.role_of("naive")) == ("none", "mvc", "randaugment", "sd_naive")
    with pytest.raises(KeyError, match="no role 'best'"):
        registry.register_method(registry.Method("toy", "real", role="best"))
    variant = registry.register_method(registry.Method("toy_variant", "mvc", role="under_test", paired=True))
    try:
        from mvc import statistics

        results = pd.DataFrame([{"method": m, "seed": s, "variant": "main", "top1": t}
                                for m, ts in [("none", [0.5, 0.6, 0.55]), ("randaugment", [0.6, 0.62, 0.58]),
                                              ("toy_variant", [0.7, 0.75, 0.72])] for s, t in enumerate(ts)])
        tests = statistics.paired_tests(results)
        assert set(tests["method"]) == {"toy_variant"} and set(tests["baseline"]) == {"none", "randaugment"}
        assert tests.set_index("baseline")["comparator"].to_dict() == {"none": False, "randaugment": True}
    finally:
        registry.METHODS.pop(variant.name)
    assert registry.role_of("under_test") == "mvc"
