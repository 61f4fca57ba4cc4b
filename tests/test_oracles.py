"""The oracle controls (a perfect generator, at the generator's bottleneck, as wrong as MVC's) and the
semi-supervised baseline on the same pool: what they are made of, and the reading the report gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mvc import artifacts


def test_oracle_real_draws_real_pool_images_of_the_source_class_each_once_before_any_twice(smoke_generated):
    cfg = smoke_generated
    splits = artifacts.load_splits(cfg).set_index("image_id")
    manifest = artifacts.load_manifest(cfg, "oracle_real")
    images = artifacts.load_images(cfg)
    from mvc.generate import pool_partners

    frame = artifacts.load_caption_embeddings(cfg).frame
    partner = pool_partners(cfg, frame, cfg.generate.images_per_source)
    drawn, _ = artifacts.load_synthetic(cfg, "oracle_real")
    for row, img in zip(manifest.itertuples(), drawn):
        pool_id = partner[(row.source_image_id, row.index)]
        assert splits.loc[pool_id, "split"] == "pool"
        assert splits.loc[pool_id, "label"] == row.label == splits.loc[row.source_image_id, "label"]
        assert np.array_equal(img, images[pool_id])  # the real image itself (backbone resolution = data resolution)
    per_class = pd.Series(list(partner.values())).groupby(
        splits.loc[list(partner.values()), "label"].to_numpy()).agg(lambda s: s.duplicated().sum())
    assert (per_class == 0).all()  # 4 shots x M=2 per class from a pool of 30: no pool image drawn twice


def test_oracle_generator_res_is_the_pool_image_through_the_vae(smoke_generated):
    from mvc.judge import through_vae

    cfg = smoke_generated
    real, manifest = artifacts.load_synthetic(cfg, "oracle_real")
    bottleneck, manifest2 = artifacts.load_synthetic(cfg, "oracle_generator_res")
    assert manifest["source_image_id"].tolist() == manifest2["source_image_id"].tolist()
    expected = through_vae(cfg, torch.from_numpy(real).permute(0, 3, 1, 2))
    got = torch.from_numpy(bottleneck).permute(0, 3, 1, 2)
    assert (expected.int() - got.int()).abs().max() <= 1  # the same decode, up to PNG rounding
    assert (got.int() - torch.from_numpy(real).permute(0, 3, 1, 2).int()).abs().float().mean() > 1  # it changed


def test_label_noise_swaps_exactly_one_minus_f_of_the_images_for_another_class():
    from mvc.classify import add_label_noise

    rng = np.random.default_rng(0)
    train_y = np.repeat(np.arange(3), 4)
    rows = np.repeat(np.arange(12), 5)
    images = torch.from_numpy(np.repeat(train_y[rows], 1)[:, None, None, None].repeat(2, 2).repeat(2, 3)).to(
        torch.uint8) * 50  # each image's pixels say its class
    noisy, out_rows, index = add_label_noise((images, rows, np.tile(np.arange(5), 12)), train_y, 0.7, rng)
    wrong = (noisy[:, 0, 0, 0] // 50).numpy() != train_y[out_rows]
    assert wrong.sum() == round(0.3 * len(rows))
    assert np.array_equal(out_rows, rows)  # every image keeps its intended label
    assert not add_label_noise((images, rows, index), train_y, 1.0, rng)[0].ne(images).any()


def test_pseudo_labels_come_from_the_pool_and_respect_the_threshold(smoke_generated):
    from mvc.classify import load_classification_data, pseudo_labelled_pool

    cfg = smoke_generated
    data = load_classification_data(cfg)
    splits = artifacts.load_splits(cfg)
    pool = splits[splits["split"] == "pool"]
    everything = pseudo_labelled_pool(cfg.model_copy(update={"classify": cfg.classify.model_copy(
        update={"pseudo_label_threshold": 1e-6})}), data)
    assert len(everything[0]) == len(pool)  # every pool image passes a threshold of 0
    strict = pseudo_labelled_pool(cfg.model_copy(update={"classify": cfg.classify.model_copy(
        update={"pseudo_label_threshold": 0.999999})}), data)
    assert len(strict[0]) < len(pool)  # a 5-step teacher is not sure of every pool image
    said = __import__("json").loads((cfg.paths.pseudo_labels / f"{cfg.current_unit.name}.json").read_text())
    assert said["pool_images"] == len(pool) and said["kept"] == len(strict[0])  # the last call's, for the report
    assert said["threshold"] == 0.999999
    assert said["kept_correct"] is None if said["kept"] == 0 else 0 <= said["kept_correct"] <= 1
    x, rows, index = everything
    assert ((rows >= 0) & (rows < len(data.train_y))).all()
    # each row's images are distinct pool images, indexed 0, 1, ... per labelled image
    for r in np.unique(rows):
        assert sorted(index[rows == r].tolist()) == list(range((rows == r).sum()))


def test_pseudo_label_trains_on_the_pool_and_real_only_methods_do_not(smoke_generated):
    from mvc import classifiers
    from mvc.classifiers import PSEUDO_LABELLED, RunSpec, train_classifier
    from mvc.classify import load_classification_data

    c = smoke_generated.classify.model_copy(update={"p_synthetic": 1.0, "pseudo_label_threshold": 0.01})
    cfg = smoke_generated.model_copy(update={"classify": c})  # a 5-step teacher is rarely 95% sure
    data = load_classification_data(cfg, pseudo_labels=True)
    assert len(data.synthetic[PSEUDO_LABELLED][0]) > 0
    seen = []
    train_classifier(data, RunSpec("pseudo_label", 0, p_synthetic=1.0), c, cfg.data.resolution,
                     on_batch=lambda phase, x, used: seen.append(used.mean()))
    assert np.mean(seen) > 0.3  # most real images replaced by pool images of their pseudo-class
    seen.clear()
    train_classifier(data, RunSpec("none", 0), c, cfg.data.resolution,
                     on_batch=lambda phase, x, used: seen.append(used.mean()))
    assert np.mean(seen) == 0
    assert classifiers.phase_schedule("pseudo_label", c)[0][2]  # synthetic replacement allowed


def _results(effects: dict[str, float], seeds: int = 6, noise: float = 0.2) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    base = rng.normal(0.8, 0.02, seeds)
    return pd.DataFrame([{"method": m, "seed": s, "top1": base[s] + e / 100 + rng.normal(0, noise / 100),
                          "top5": 1.0, "variant": "main", "replicate": 0}
                         for m, e in effects.items() for s in range(seeds)])


@pytest.mark.parametrize(("effects", "reading"), [
    ({"none": 0, "oracle_real": 0.1, "oracle_generator_res": 0, "oracle_noisy": 0, "mvc": 0},
     "No added-image method can be shown to win"),
    ({"none": 0, "oracle_real": 5, "oracle_generator_res": 4, "oracle_noisy": 2, "mvc": 2},
     "The generator explains MVC's result"),
    ({"none": 0, "oracle_real": 5, "oracle_generator_res": 4, "oracle_noisy": 2, "mvc": 4},
     "Mixing adds something beyond label fidelity"),
    ({"none": 0, "oracle_real": 5, "oracle_generator_res": 4, "oracle_noisy": 3, "mvc": 1},
     "MVC is below a perfect generator"),
])
def test_the_report_says_which_reading_the_oracles_support(effects, reading):
    from mvc.report_text import oracle_reading
    from mvc.statistics import oracle_tests, paired_tests

    table = oracle_tests(_results(effects))
    assert len(table) == 5 and table["p_holm"].notna().all()
    assert oracle_reading(table).startswith(reading) or reading in oracle_reading(table)
    assert not {"oracle_real", "oracle_noisy"} & set(paired_tests(_results(effects))["baseline"])  # controls


@pytest.mark.parametrize(("effect", "said"), [(3.0, "mvc is above randaugment"),
                                              (0.0, "The interval does not exclude 0")])
def test_the_primary_contrast_is_one_uncorrected_test_with_what_it_can_detect(effect, said):
    from mvc.report_text import primary_reading
    from mvc.statistics import paired_tests, primary_contrast

    results = _results({"none": 0, "randaugment": 0.5, "mixup": 0.2, "mvc": 0.5 + effect}, noise=0.8)
    table = primary_contrast(results, "randaugment", None, target=0.1)
    assert len(table) == 1 and table.loc[0, "baseline"] == "randaugment"
    tests = paired_tests(results)
    assert table.loc[0, "p_value"] == tests.set_index("baseline").loc["randaugment", "p_value"]  # not Holm's
    assert table.loc[0, "units_for_target"] > 6  # 0.1 points at this spread needs more than the six seeds
    reading = primary_reading(table)
    assert said in reading and "Declared in the params before the run" in reading
    assert ("would take about" in reading) == (table.loc[0, "mde80"] > 0.1)
    assert primary_contrast(results, "autoaugment", None, 1.0).empty  # the comparator did not run


def test_a_primary_level_the_study_does_not_have_is_refused(smoke):
    from mvc.config import StudyConfig

    with pytest.raises(ValueError, match="report.primary_shots is 7"):
        StudyConfig.model_validate({**smoke.model_dump(), "report": {"primary_shots": 7}})


def test_no_reading_without_the_oracles():
    from mvc.report_text import oracle_reading
    from mvc.statistics import oracle_tests

    assert oracle_reading(oracle_tests(_results({"none": 0, "mvc": 1}))) is None


def test_the_judge_is_measured_through_the_vae(smoke_generated):
    from mvc.judge import judge_accuracy_through_vae, train_judge
    from mvc.metrics import METRIC_COLUMNS

    cfg = smoke_generated
    judge, data = train_judge(cfg)
    ceiling = judge_accuracy_through_vae(cfg, judge, data)
    assert 0 <= ceiling <= 1
    assert "judge_accuracy_through_vae" in METRIC_COLUMNS
