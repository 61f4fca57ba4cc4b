from __future__ import annotations

import numpy as np
import torch

from mvc.image_measures import FeatureModule, diversity, fid_kid


def _features():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                              torch.nn.Flatten())
    return FeatureModule(net)


def test_zero_distance_to_itself_and_more_for_a_shifted_set():
    rng = np.random.default_rng(0)
    real = torch.from_numpy(rng.integers(0, 200, (80, 3, 16, 16), dtype=np.uint8))
    feats = _features()
    fid_same, kid_same, _ = fid_kid(feats, real, real, 40, 16)
    shifted = (real.int() + 50).clamp(0, 255).to(torch.uint8)
    fid_shift, kid_shift, _ = fid_kid(feats, real, shifted, 40, 16)
    assert abs(fid_same) < 1e-3 and abs(kid_same) < 1e-3
    assert fid_shift > 0.01 + 100 * abs(fid_same) and kid_shift > 0.001 + 10 * abs(kid_same)


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


def test_metrics_stage_on_the_smoke_study(smoke_generated):
    from mvc.metrics import image_metrics

    table = image_metrics(smoke_generated, show_progress=False)
    assert set(table["synthetic_set"]) == {"real_train", "mvc_coarse", "mvc_fine", "naive"}
    assert table["label_fidelity"].between(0, 1).all() and (table["fid"] >= -1e-6).all()
