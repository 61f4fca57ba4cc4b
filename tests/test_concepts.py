"""The testbed with known concepts: its shots correlate factors with the class while the pool and test do not, its
captioner names the factors it sees, and the novel-combination rate counts what the shots never showed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mvc import artifacts
from tests.conftest import REPO, smoke_config, stage_functions

CONCEPTS = ["data.dataset=concepts", "data.classes=[circle, square, triangle]", "data.resolution=16",
            "backbone.resolution=16", "caption.backend=factors", "backbone.surrogate.source_domain=none",
            "generate.sets=[sd_naive]", "classify.methods=[none, mvc]"]


def test_the_factor_captioner_reads_every_factor_and_never_the_shape():
    from mvc.concepts import SHAPES, FactorCaptioner, factors_of, read_factors, render

    images = np.stack([np.asarray(render(i)) for i in range(400)])
    read = read_factors(images)
    for i, got in enumerate(read):
        truth = factors_of(i)
        assert got == {k: truth[k] for k in got}, i
    captions = FactorCaptioner()(images[:40])
    assert not any(shape in c for c in captions for shape in SHAPES)
    assert len(set(captions)) > 20  # 48 combinations: the captions tell images apart


def test_the_shots_show_few_combinations_and_test_shows_them_all(tmp_path):
    from mvc.concepts import FACTORS, labelled_combinations, source_factors

    cfg = smoke_config(tmp_path, *CONCEPTS, "data.test_per_class=60", "data.pool_per_class=null")
    stage_functions()["data"](cfg, show_progress=False)
    splits = artifacts.stored_splits(cfg)
    factors = pd.DataFrame([source_factors(s) for s in splits["source"]])
    train = (splits["split"] == "train").to_numpy()
    for label, f in zip(splits["label"][train], factors[train].to_dict("records")):
        allowed = labelled_combinations(label)
        assert all(f[k] in allowed[k] for k in FACTORS)  # only the class's labelled combinations
    assert (factors["shape"] == splits["class_name"]).all()
    test = (splits["split"] == "test").to_numpy()
    for name, values in FACTORS.items():  # every value of every factor in every class's test images
        seen = factors[test].groupby(splits["label"][test].to_numpy())[name].nunique()
        assert (seen == len(values)).all(), name
    outside = [not all(f[k] in labelled_combinations(y)[k] for k in FACTORS)
               for y, f in zip(splits["label"][test], factors[test].to_dict("records"))]
    assert np.mean(outside) > 0.8  # test is decorrelated: most of it is of combinations the shots never show


class _ExactProbes:
    """Probes that read the factors from the pixels exactly (the testbed's renderer is clean)."""

    def read(self, images):
        from mvc.concepts import read_factors

        return pd.DataFrame(read_factors(images.permute(0, 2, 3, 1).numpy()))


def test_novel_share_counts_the_combinations_the_shots_lack():
    import torch

    from mvc.concepts import factors_of, labellable, render
    from mvc.factor_probes import combinations, novel_share

    index = np.arange(600)
    images = torch.from_numpy(np.stack([np.asarray(render(i)) for i in index])).permute(0, 3, 1, 2)
    labels = index % 4
    facts = pd.DataFrame([factors_of(i) for i in index]).drop(columns="shape")
    shots = np.array([labellable(factors_of(i)) for i in index])
    labelled = set(combinations(labels[shots], facts[shots]))
    probes = _ExactProbes()
    assert novel_share(probes, images[shots], labels[shots], labelled) == 0
    rest = novel_share(probes, images[~shots], labels[~shots], labelled)
    assert rest == 1  # an image outside the labelled combinations is always novel
    assert 0.85 < novel_share(probes, images, labels, labelled) < 0.98  # about 11 in 12 of all images


def test_factor_probes_learn_the_factors_from_the_pool(tmp_path):
    from mvc.factor_probes import FactorProbes

    cfg = smoke_config(tmp_path, *CONCEPTS, "data.pool_per_class=60", "metrics.judge_steps=60")
    stage_functions()["data"](cfg, show_progress=False)
    probes = FactorProbes(cfg, artifacts.stored_splits(cfg), artifacts.load_images(cfg))
    assert set(probes.accuracy) == {"colour", "background", "size", "position"}
    assert min(probes.accuracy.values()) > 0.7, probes.accuracy


def test_the_concepts_profile_is_the_testbed():
    from mvc.config import load_config

    cfg = load_config(REPO / "params" / "concepts.yaml")
    assert cfg.data.dataset == "concepts" and cfg.caption.backend == "factors"
    assert cfg.backbone.resolution == cfg.data.resolution == 16  # drawn at the classifier's resolution
    assert {"oracle_real", "oracle_generator_res", "oracle_noisy", "pseudo_label", "randaugment", "none", "mvc",
            "mvc_nomix", "sd_naive", "sd_img2img"} <= set(cfg.classify.methods)
