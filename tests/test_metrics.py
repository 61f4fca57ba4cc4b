from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mvc.image_measures import (
    FeatureModule,
    diversity,
    extract_features,
    frechet_distance,
    kid_subset_scores,
    kid_summary,
    stratified_sample,
)


def _features():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                              torch.nn.Flatten())
    return FeatureModule(net)


def _images(seed: int, n: int, channels: int = 3, size: int = 16) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 200, (n, channels, size, size), dtype=np.uint8))


def _fid_kid(feats, real: torch.Tensor, fake: torch.Tensor, subset_size: int) -> tuple[float, float]:
    r, f = extract_features(feats, real), extract_features(feats, fake)
    scores = kid_subset_scores(r, f, 20, subset_size, np.random.default_rng(0))
    return frechet_distance(r, f), kid_summary(scores)["kid_mean"]


@pytest.mark.parametrize("sizes", [(30, 30, 512), (5, 40, 64), (12, 7, 64)])
def test_the_low_rank_frechet_distance_equals_torchmetrics(sizes):
    from torchmetrics.image.fid import FrechetInceptionDistance

    from mvc.image_measures import _GivenFeatures, low_rank_frechet_distance

    n_real, n_fake, d = sizes
    g = torch.Generator().manual_seed(0)
    real = torch.randn(n_real, d, generator=g, dtype=torch.float64)
    fake = torch.randn(n_fake, d, generator=g, dtype=torch.float64) * 1.3 + 0.2
    fid = FrechetInceptionDistance(feature=_GivenFeatures(d))
    fid.update(real, real=True)
    fid.update(fake, real=False)
    reference = float(fid.compute())
    assert low_rank_frechet_distance(real, fake) == pytest.approx(reference, rel=1e-6)
    assert frechet_distance(real, fake) == pytest.approx(reference, rel=1e-6)  # the path taken below d images
    assert low_rank_frechet_distance(real, real) == pytest.approx(0, abs=1e-8)


def test_zero_distance_to_itself_and_more_for_a_shifted_set():
    real, feats = _images(0, 80), _features()
    fid_same, kid_same = _fid_kid(feats, real, real, 80)
    shifted = (real.int() + 50).clamp(0, 255).to(torch.uint8)
    fid_shift, kid_shift = _fid_kid(feats, real, shifted, 40)
    assert abs(fid_same) < 1e-3 and abs(kid_same) < 1e-3
    assert fid_shift > 0.01 + 100 * abs(fid_same) and kid_shift > 0.001 + 10 * abs(kid_same)


def test_kid_subset_scores_match_torchmetrics_and_give_an_interval():
    from torchmetrics.image.kid import KernelInceptionDistance

    from mvc.image_measures import _GivenFeatures

    rng = np.random.default_rng(3)
    real = torch.from_numpy(rng.normal(size=(30, 6)))
    fake = torch.from_numpy(rng.normal(0.5, 1.2, size=(30, 6)))
    kid = KernelInceptionDistance(feature=_GivenFeatures(6), subsets=5, subset_size=30)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    expected = float(kid.compute()[0])  # subsets of the whole set: every subset gives the same value
    ours = kid_subset_scores(real, fake, 5, 30, np.random.default_rng(0))
    assert np.allclose(ours, expected, rtol=1e-6, atol=1e-9)
    scores = kid_subset_scores(real, fake, 200, 10, np.random.default_rng(0))
    again = kid_subset_scores(real, fake, 200, 10, np.random.default_rng(0))
    s = kid_summary(scores)
    assert np.array_equal(scores, again) and scores.std() > 0
    assert s["kid_ci95_low"] < s["kid_mean"] < s["kid_ci95_high"] and abs(s["kid_mean"] - expected) < 3 * s["kid_std"]
    assert set(s) == {"kid_mean", "kid_std", "kid_ci95_low", "kid_ci95_high"}


def test_stratified_sample_has_equal_counts_per_class_is_seeded_and_never_repeats():
    labels = np.repeat([0, 1, 2], [50, 7, 20])  # stored class by class, unbalanced
    a = stratified_sample(labels, 5, np.random.default_rng(0))
    assert len(a) == 15 and len(set(a.tolist())) == 15
    assert np.bincount(labels[a]).tolist() == [5, 5, 5]
    assert np.array_equal(a, stratified_sample(labels, 5, np.random.default_rng(0)))
    assert not np.array_equal(a, stratified_sample(labels, 5, np.random.default_rng(1)))
    assert len(set(stratified_sample(labels, 7, np.random.default_rng(0)).tolist())) == 21
    with pytest.raises(ValueError, match="class 1"):
        stratified_sample(labels, 8, np.random.default_rng(0))


def test_images_per_class_is_the_largest_every_set_gives_capped_by_max_images():
    from mvc.metrics import images_per_class

    sets = {"test": np.repeat([0, 1], [40, 30]), "real_train": np.repeat([0, 1], [10, 12])}
    assert images_per_class(sets, 2, 1000) == 10
    assert images_per_class(sets, 2, 10) == 5
    with pytest.raises(ValueError, match="'naive' has no image of class 1"):
        images_per_class({**sets, "naive": np.zeros(5, int)}, 2, 1000)


def test_diversity_is_zero_for_copies_and_grows_with_spread():
    rng = np.random.default_rng(1)
    one = torch.from_numpy(rng.integers(0, 255, (1, 3, 16, 16), dtype=np.uint8))
    copies = one.repeat(10, 1, 1, 1)
    varied = torch.from_numpy(rng.integers(0, 255, (10, 3, 16, 16), dtype=np.uint8))
    labels = np.zeros(10, int)
    feats = _features()
    assert diversity(feats, copies, labels) < 1e-6
    assert diversity(feats, varied, labels) > 0.01


def test_efficientnet_lite0_weights_load_offline():
    from mvc.image_measures import efficientnet_lite0_features

    feats = efficientnet_lite0_features()
    out = feats(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    assert out.shape == (2, 1280) and torch.isfinite(out).all()


def _random_inception_weights(path, monkeypatch) -> dict:
    """A randomly initialised FID Inception's state dict, saved to `path` (nothing is downloaded)."""
    from tests.tiny_models import save_random_inception

    return save_random_inception(path)


def test_inception_features_and_fid_from_a_local_weights_file(tmp_path, monkeypatch):
    from mvc.metrics import feature_extractor
    from tests.conftest import smoke_config

    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    state = _random_inception_weights(path, monkeypatch)
    cfg = smoke_config(tmp_path, "metrics.feature_extractor=inception", f"metrics.inception_weights={path}")
    feats = feature_extractor(cfg, judge=None)
    loaded = feats.network.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    real, grey = _images(0, 8), _images(1, 1, channels=1)
    shifted = (real.int() + 60).clamp(0, 255).to(torch.uint8)
    r, f = extract_features(feats, real), extract_features(feats, shifted)
    assert r.shape == (8, 2048) and r.dtype == torch.float64 and torch.isfinite(r).all()
    assert feats(grey).shape == (1, 2048)  # one-channel images are repeated to RGB
    assert abs(frechet_distance(r, r)) < 1e-3 and frechet_distance(r, f) > 1e-3
    assert kid_summary(kid_subset_scores(r, f, 10, 4, np.random.default_rng(0)))["kid_mean"] > 0
    with pytest.raises(TypeError, match="uint8"):
        feats(real.float())


def test_inception_without_weights_offline_names_the_field_and_the_file(tmp_path, monkeypatch):
    from mvc.image_measures import INCEPTION_FILE, inception_features

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    for weights in (None, str(tmp_path / "missing.pth")):
        with pytest.raises(RuntimeError, match="metrics.inception_weights") as err:
            inception_features(weights)
        assert INCEPTION_FILE in str(err.value) and "github.com/toshas/torch-fidelity/releases" in str(err.value)


def test_judge_splits_default_to_val_and_pool_and_reject_train(tmp_path):
    from mvc.config import ConfigError
    from tests.conftest import smoke_config

    assert list(smoke_config(tmp_path).metrics.judge_splits) == ["val", "pool"]
    with pytest.raises(ConfigError, match="metrics.judge_splits must not contain 'train'"):
        smoke_config(tmp_path, "metrics.judge_splits=[train, val]")


def test_judge_splits_without_images_raise(smoke_generated, monkeypatch):
    from mvc import judge
    from mvc.artifacts import load_splits

    splits = load_splits(smoke_generated)
    monkeypatch.setattr(judge, "load_splits", lambda cfg: splits[splits["split"].isin(["train", "test"])])
    with pytest.raises(ValueError, match=r"metrics.judge_splits \['val', 'pool'\] hold no images"):
        judge.train_judge(smoke_generated)


def test_the_judge_is_trained_once_per_study_folder_and_can_be_a_pretrained_network(smoke_generated, monkeypatch):
    from mvc import judge as judges
    from mvc import metrics
    from mvc.classifiers import normalize
    from mvc.config import with_values

    cfg = with_values(smoke_generated, {"metrics.judge_backbone": "efficientnet_lite0", "metrics.judge_steps": 2})
    trained = []
    real = judges.train_classifier
    monkeypatch.setattr(judges, "train_classifier", lambda *a, **k: trained.append(a[2].backbone) or real(*a, **k))
    judge, data = judges.train_judge(cfg)
    again, _ = judges.train_judge(cfg)  # the metrics stage, then classify's filter: one training
    assert trained == ["efficientnet_lite0"] and len(list((cfg.paths.run / "judge").glob("efficientnet_lite0-*")))
    x = normalize(data.test_x[:6])
    with torch.no_grad():
        assert torch.allclose(judge(x), again(x), atol=1e-5)
        features = metrics.feature_extractor(cfg, again)(data.test_x[:6])  # the image measures' features
    assert features.shape == (6, judge.body.num_features) and torch.isfinite(features).all()
    methods = [m for m in cfg.classify.methods if m != "mixup"]
    judges.train_judge(with_values(cfg, {"classify.methods": methods, "classify.seeds": [5]}))  # not its recipe
    assert trained == ["efficientnet_lite0"]
    judges.train_judge(with_values(cfg, {"metrics.judge_steps": 3}))  # another recipe: another judge
    judges.train_judge(with_values(cfg, {"classify.lr": 0.01}))
    assert trained == ["efficientnet_lite0"] * 3


def test_the_judge_is_not_scored_on_the_images_it_learnt_from(smoke_generated):
    from mvc import judge as judges
    from mvc.config import with_values

    judge, data = judges.train_judge(with_values(smoke_generated, {"metrics.judge_steps": 2}))
    scored = judges.judge_accuracy(smoke_generated, judge, data)
    assert 0 <= scored <= 1 and list(smoke_generated.metrics.judge_splits) == ["val", "pool"]
    # a selection without a pool: the judge learns from val and is scored on val
    no_pool = with_values(smoke_generated, {"metrics.judge_splits": ["val"], "metrics.judge_scored_on": "val"})
    assert np.isnan(judges.judge_accuracy(no_pool, judge, data))
    with_pool = with_values(smoke_generated, {"metrics.judge_splits": ["pool"], "metrics.judge_scored_on": "val"})
    assert judges.judge_accuracy(with_pool, judge, data) == scored


def test_metrics_stage_on_the_smoke_study(smoke_generated):
    from mvc.artifacts import load_captions, load_splits
    from mvc.metrics import METRIC_COLUMNS, image_metrics
    from mvc.state import stage_info

    cfg = smoke_generated
    table = image_metrics(cfg, show_progress=False)
    assert list(table.columns) == METRIC_COLUMNS
    assert set(table["synthetic_set"]) == {"real_train", "mvc_coarse", "mvc_fine", "mvc_none", "sd_naive", "sd_img2img",
                                           "dafusion", "sd_finetuned", "mvc_nomix_trained", "oracle_real",
                                           "oracle_generator_res"}
    assert table["label_fidelity"].between(0, 1).all() and (table["fid"] >= -1e-6).all()
    # the smoke study has 4 training images per class: every set is cut to 4 of each of the 3 classes
    assert (table["images_per_class"] == 4).all()  # FID, KID, diversity: an equal stratified sample of every set
    images = table.set_index("synthetic_set")["images"]  # fidelity and copies: every image of a set
    assert images["real_train"] == 12 and (images.drop(["real_train", "dafusion"]) == 24).all()
    assert images["dafusion"] == 12 * cfg.generate.dafusion_images_per_source  # its own M
    assert (table["kid_ci95_low"] <= table["kid_mean"]).all() and (table["kid_mean"] <= table["kid_ci95_high"]).all()
    info = stage_info(cfg, "metrics")
    splits = load_splits(cfg)
    assert info["judge_splits"] == ["val", "pool"] and info["images_per_class"] == 4
    assert info["judge_images"] == splits["split"].isin(["val", "pool"]).sum()
    assert np.allclose(table["judge_accuracy_on_real"], info["judge_accuracy_on_real"])
    assert np.allclose(table["judge_accuracy_through_vae"], info["judge_accuracy_through_vae"])
    real = table.set_index("synthetic_set").loc["oracle_real"]
    assert real["label_fidelity"] == 1 and real["copies_pool"] == 1  # real pool images the judge trained on
    assert pd.read_csv(cfg.paths.image_metrics, dtype={"shots": str}).equals(table)
    assert (table["shots"] == "4").all() and (table["partners_per_class"] == 3).all()
    captions = load_captions(cfg).set_index("image_id")
    train = splits[splits["split"] == "train"]
    distinct = captions.loc[train["image_id"], "text"].groupby(train["label"].to_numpy()).nunique()
    assert (table["captions_per_class"] == round(distinct.mean(), 2)).all()
    share = (distinct / train.groupby("label").size().to_numpy()).mean()
    assert (table["distinct_caption_share"] == round(share, 3)).all() and 0 < share <= 1
    assert table["copies_pool"].between(0, 1).all() and table["copies_source"].between(0, 1).all()


def test_memorization_finds_exact_and_near_copies_and_not_new_images():
    from mvc.image_measures import memorization, nearest_two

    rng = np.random.default_rng(0)
    train = torch.from_numpy(rng.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8))
    real = float(nearest_two(train, train, torch.arange(20))[0].median())
    exact = train[:10].clone()
    near = (train[10:].int() + torch.from_numpy(rng.integers(-6, 7, (10, 3, 8, 8)))).clamp(0, 255).to(torch.uint8)
    new = torch.from_numpy(rng.integers(0, 256, (10, 3, 8, 8), dtype=np.uint8))
    assert memorization(exact, train, real)["copies"] == 1.0 and memorization(exact, train, real)["nn_distance"] == 0
    assert memorization(near, train, real)["copies"] == 1.0
    assert memorization(new, train, real)["copies"] == 0.0
    assert abs(memorization(new, train, real)["nn_distance_vs_real"] - 1.0) < 0.2
    # the training images against themselves: no image is its own copy
    assert memorization(train, train, real, torch.arange(20))["copies"] == 0.0
