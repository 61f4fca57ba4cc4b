from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mvc import artifacts, classifiers, classify
from mvc.classifiers import RunSpec, method_transform, train_classifier
from mvc.config import ConfigError, load_config
from tests.conftest import REPO


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    x = torch.zeros(16, 3, 16, 16, dtype=torch.uint8)
    x[:, :, 4:12, 5:11] = torch.from_numpy(rng.integers(100, 255, (16, 3, 8, 6), dtype=np.uint8))
    return x


def _cfg(smoke, **kw):
    return smoke.classify.model_copy(update=kw)


@pytest.mark.parametrize("method", ["autoaugment", "randaugment", "trivialaugment", "mvc_randaugment"])
def test_augmentations_change_pixel_values(smoke, batch, method):
    torch.manual_seed(0)
    tf = method_transform(method, _cfg(smoke, crop_padding=0), 16)
    out = torch.stack([tf(im) for im in batch])
    assert out.shape == batch.shape and out.dtype == torch.uint8
    assert (out != batch).any(dim=(1, 2, 3)).float().mean() > 0.5


def test_none_only_crops_and_flips(smoke, batch):
    torch.manual_seed(0)
    tf = method_transform("none", _cfg(smoke, hflip=True, crop_padding=2), 16)
    for im in batch:
        out = tf(im)
        padded = torch.nn.functional.pad(im, (2, 2, 2, 2))
        found = any(torch.equal(out, cand) for dy in range(5) for dx in range(5)
                    for cand in (padded[:, dy: dy + 16, dx: dx + 16], padded[:, dy: dy + 16, dx: dx + 16].flip(-1)))
        assert found  # a shifted (and maybe mirrored) copy: no pixel value invented


def test_the_batch_crop_and_flip_draws_per_image_what_the_per_image_transform_does(smoke, batch):
    torch.manual_seed(0)
    c = _cfg(smoke, hflip=True, crop_padding=2)
    seen = set()
    for _ in range(20):
        out = classifiers.crop_and_flip_batch(batch, c, 16)
        assert out.shape == batch.shape and out.dtype == torch.uint8
        for im, o in zip(batch, out):
            padded = torch.nn.functional.pad(im, (2, 2, 2, 2))
            found = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (0, 1)
                     if torch.equal(o, padded[:, dy: dy + 16, dx: dx + 16].flip(-1) if f
                                    else padded[:, dy: dy + 16, dx: dx + 16])]
            assert found  # a shifted (and maybe mirrored) copy of its own image: no pixel invented, none swapped
            seen.add(found[0])
    assert len(seen) > 40  # offsets and flips drawn per image: most of the 50 crops of v2.RandomCrop + flip occur
    assert torch.equal(classifiers.crop_and_flip_batch(batch, _cfg(smoke, hflip=False, crop_padding=0), 16), batch)


@pytest.mark.parametrize("method", ["mixup", "cutmix"])
def test_mixup_and_cutmix_mix_labels(smoke, batch, method):
    torch.manual_seed(0)
    tf = classifiers.batch_transform(method, smoke.classify, 4)
    x, y = tf(batch.float() / 255, torch.arange(16) % 4)
    assert y.shape == (16, 4) and torch.allclose(y.sum(1), torch.ones(16))
    assert (y.max(1).values < 1).any()


def _data(n_train=12, classes=3, with_synthetic=True):
    rng = np.random.default_rng(0)
    d = classifiers.ClassificationData(torch.from_numpy(rng.integers(0, 255, (n_train, 3, 16, 16), dtype=np.uint8)),
                                    torch.arange(n_train) % classes,
                                    torch.from_numpy(rng.integers(0, 255, (9, 3, 16, 16), dtype=np.uint8)),
                                    torch.arange(9) % classes, classes)
    if with_synthetic:
        syn = torch.full((n_train * 2, 3, 16, 16), 7, dtype=torch.uint8)  # recognisable synthetic pixels
        d.synthetic["mvc_coarse"] = (syn, np.repeat(np.arange(n_train), 2), np.tile([0, 1], n_train))
    return d


def test_phase_two_sees_no_synthetic_image_and_budgets_match(smoke):
    c = _cfg(smoke, steps=10, batch_size=6, crop_padding=0, two_phase_fraction=0.3)
    seen = {}

    for method in ("none", "autoaugment", "mixup", "mvc", "mvc_two_phase"):
        log = []
        gens = ("mvc_coarse",) if method.startswith("mvc") else ()
        train_classifier(_data(), RunSpec(method, 0, synthetic_sets=gens, p_synthetic=1.0), c, 16,
                         on_batch=lambda phase, x, used, log=log: log.append((phase, used.copy(), x)))
        seen[method] = log
        assert len(log) == c.steps  # the same number of optimizer steps for every method
    two = seen["mvc_two_phase"]
    assert [p for p, _, _ in two].count(1) == 3
    assert all(not used.any() for p, used, _ in two if p == 1)
    assert all((x != 7).any(dim=(1, 2, 3)).all() for p, _, x in two if p == 1)
    assert all(used.all() for p, used, _ in two if p == 0)  # p_synthetic = 1: every image replaced
    assert all(not used.any() for _, used, _ in seen["none"])


def test_two_phase_training_changes_the_classifiers_predictions(smoke):
    """mvc and mvc_two_phase share the seed, so their first phase draws the same batches; the second phase (real
    images only, a lower rate) must then move the weights, and the test predictions with them. (Equal means of the
    two in an old digits_full report were a tie of means on a small test set, not equal runs.)"""
    from mvc.classifiers import predict_logits

    c = _cfg(smoke, steps=12, batch_size=6, crop_padding=0, two_phase_fraction=0.5, two_phase_lr_scale=0.5)
    data, logits, batches = _data(), {}, {}
    for method in ("mvc", "mvc_two_phase"):
        log = []
        model = train_classifier(data, RunSpec(method, 0, synthetic_sets=("mvc_coarse",), p_synthetic=1.0), c, 16,
                                 on_batch=lambda phase, x, used, log=log: log.append(x.clone()))
        logits[method], batches[method] = predict_logits(model, data.test_x, "cpu"), log
    assert all(torch.equal(a, b) for a, b in zip(batches["mvc"][:6], batches["mvc_two_phase"][:6]))
    assert not any(torch.equal(a, b) for a, b in zip(batches["mvc"][6:], batches["mvc_two_phase"][6:]))
    assert not torch.allclose(logits["mvc"], logits["mvc_two_phase"], atol=1e-4)


def test_source_pretrained_trains_on_the_source_domain_then_on_the_labelled_images(smoke_generated):
    """The control that gets the generator's extra data directly: its first source_fraction of steps draw from the
    labelled source domain the surrogate learnt from (printed digits, with their labels), the rest from the shots."""
    from mvc.classify import load_classification_data

    cfg = smoke_generated
    c = _cfg(cfg, steps=10, batch_size=6, crop_padding=0, hflip=False, source_fraction=0.4)
    data = load_classification_data(cfg, source=True)
    assert data.source is not None and len(data.source[1]) == 3 * cfg.backbone.surrogate.source_per_class
    assert set(data.source[1].tolist()) == {0, 1, 2}
    log = []
    train_classifier(data, RunSpec("source_pretrained", 0), c, cfg.data.resolution,
                     on_batch=lambda phase, x, used, log=log: log.append((phase, x)))
    assert [p for p, _ in log] == [0] * 4 + [1] * 6
    source = {bytes(x.numpy()) for x in data.source[0]}
    real = {bytes(x.numpy()) for x in data.train_x}
    assert all(bytes(x.numpy()) in source for p, xs in log if p == 0 for x in xs)
    assert all(bytes(x.numpy()) in real for p, xs in log if p == 1 for x in xs)
    with pytest.raises(ConfigError, match="source domain"):
        load_config(REPO / "params/smoke.yaml", ["classify.methods=[none, source_pretrained]",
                                                 "backbone.surrogate.source_domain=none"])


def test_a_run_is_reproducible_per_seed(smoke):
    c = _cfg(smoke, steps=5, batch_size=6)
    d = _data()
    spec = RunSpec("mvc", 1, synthetic_sets=("mvc_coarse",), p_synthetic=0.5)
    a, b = train_classifier(d, spec, c, 16), train_classifier(d, spec, c, 16)
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)
    other = train_classifier(d, RunSpec("mvc", 2, synthetic_sets=("mvc_coarse",), p_synthetic=0.5), c, 16)
    assert any(not torch.equal(p, q) for p, q in zip(a.state_dict().values(), other.state_dict().values()))


def test_grid_resumes_without_repeating_rows_and_ignores_old_hashes(smoke_generated, tmp_path):
    import shutil

    from tests.conftest import smoke_config

    cfg = smoke_config(tmp_path, "classify.seeds=[0,1]", "classify.steps=2",
                       "classify.methods=[none,mixup,sd_naive,mvc,mvc_two_phase]")
    shutil.copytree(smoke_generated.paths.run, cfg.paths.run)
    (cfg.paths.stages / "classify.json").unlink(missing_ok=True)
    cfg.paths.results.unlink(missing_ok=True)
    # a row written under other params is in the file from the start
    old = pd.DataFrame([{c: 0 for c in artifacts.RESULT_COLUMNS} | {"method": "none", "seed": 0, "variant": "main",
                                                                   "top1": 0.99, "params_hash": "oldhash"}])
    old.to_csv(cfg.paths.results, index=False)
    partial = classify.classify_all(cfg, show_progress=False, max_runs=3)
    assert partial is None  # stopped early: not marked done
    assert len(artifacts.load_results(cfg, require_done=False)) == 3
    with open(cfg.paths.results, "a") as fh:
        fh.write("digits,mvc,1,4,small_cnn,main,0.5")  # a kill in the middle of a row
    full = classify.classify_all(cfg, show_progress=False)
    assert len(full) == 10 and not full.duplicated(["variant", "method", "seed"]).any()
    assert "oldhash" not in set(full["params_hash"]) and (full["top1"] != 0.99).all()
    assert sorted(set(full["method"])) == ["mixup", "mvc", "mvc_two_phase", "none", "sd_naive"]


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "timm:resnet18"])
def test_pretrained_weights_offline_give_a_clear_error(name, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache: nothing to load offline
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    if name == "resnet18":  # torchvision downloads from a URL: make that fail as it does offline
        import torch.hub

        def offline(*args, **kwargs):
            raise OSError("network unreachable")

        monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises((RuntimeError, ValueError)) as err:
        classifiers.build_classifier(name, 3, pretrained=True)
    assert "classify.pretrained" in str(err.value)


def test_the_pretrained_efficientnet_lite0_classifier_loads_offline_and_trains(smoke):
    """The CPU profiles' backbone for natural images: ImageNet weights from the installed registry package (no
    network), a new head, the kit's small images resized to classify.input_size."""
    from mvc.image_measures import efficientnet_lite0

    model = classifiers.build_classifier("efficientnet_lite0", 5, pretrained=True, input_size=32)
    reference = efficientnet_lite0(pretrained=True).state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in model.body.state_dict().items())
    random_init = classifiers.build_classifier("efficientnet_lite0", 5, pretrained=False, input_size=32)
    assert not torch.equal(random_init.body.conv_stem.weight, model.body.conv_stem.weight)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    assert model(classifiers.normalize(x)).shape == (4, 5)
    c = _cfg(smoke, backbone="efficientnet_lite0", pretrained=True, input_size=32, steps=2, batch_size=4)
    data = classifiers.ClassificationData(x, torch.tensor([0, 1, 2, 3]), x, torch.tensor([0, 1, 2, 3]), 5)
    from mvc.runtime import seed_everything

    seed_everything(0)  # as train_classifier seeds before it builds: the same initial head
    init = classifiers.build_classifier("efficientnet_lite0", 5, pretrained=True, input_size=32)
    trained = train_classifier(data, RunSpec("randaugment", 0), c, 16)
    assert trained.head.weight.shape == init.head.weight.shape
    assert not torch.equal(trained.head.weight, init.head.weight)  # two steps moved it


def test_the_judge_filter_keeps_images_labelled_as_intended_and_never_relabels(smoke_generated):
    """mvc_filtered: only the synthetic images the metrics' judge labels as their intended class; the share kept is
    the set's label fidelity; a kept image keeps its source (and so its class)."""
    from mvc.classifiers import evaluate
    from mvc.classify import load_classification_data
    from mvc.judge import train_judge

    cfg = smoke_generated
    full = load_classification_data(cfg, ["mvc_coarse"])
    kept = load_classification_data(cfg, ["mvc_coarse"], filtered=True)
    x, src, idx = full.synthetic["mvc_coarse"]
    kx, ksrc, kidx = kept.synthetic["mvc_coarse"]
    judge = train_judge(cfg)[0]
    fidelity = evaluate(judge, x, full.train_y[src])[0]
    assert len(kx) == round(fidelity * len(x))  # the share kept is the label fidelity of the metrics
    predicted = judge(classifiers.normalize(kx)).argmax(1)
    assert torch.equal(predicted, full.train_y[ksrc])  # kept only where judged as the source's class
    pairs = set(zip(src.tolist(), idx.tolist()))
    assert set(zip(ksrc.tolist(), kidx.tolist())) <= pairs  # the same images, the same sources: never relabelled
    assert artifacts.load_manifest(cfg, "mvc_coarse")["label"].tolist() == full.train_y[src].tolist()
