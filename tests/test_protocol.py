"""The classifier as the field runs it (an ImageNet ResNet-50 fine-tuned or probed at 224 px, epochs, warm-up, label
smoothing), the full-data profiles, and the weights a study reads found before any work (docs/protocol.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvc.classifiers import ClassificationData, ImageNetClassifier, RunSpec, build_classifier, train_classifier
from mvc.config import load_config
from tests.conftest import REPO
from tests.tiny_models import save_random_torchvision_weights


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("torch_home")
    save_random_torchvision_weights("resnet18", home)
    return home


def _data(n=12, classes=3, size=16) -> ClassificationData:
    rng = np.random.default_rng(0)
    return ClassificationData(torch.from_numpy(rng.integers(0, 255, (n, 3, size, size), dtype=np.uint8)),
                              torch.arange(n) % classes,
                              torch.from_numpy(rng.integers(0, 255, (6, 3, size, size), dtype=np.uint8)),
                              torch.arange(6) % classes, classes)


def _classify(smoke, **kw):
    return smoke.classify.model_copy(update={"crop_padding": 0, "batch_size": 4, "steps": 3, **kw})


def test_the_pretrained_classifier_reads_the_cached_weights_and_resizes(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    model = build_classifier("resnet18", 3, pretrained=True, input_size=40)
    saved = torch.load(next((torch_home / "hub" / "checkpoints").glob("resnet18-*.pth")), weights_only=True)
    assert isinstance(model, ImageNetClassifier) and model.size == 40
    assert torch.equal(model.body.conv1.weight, saved["conv1.weight"])  # the file's weights, its standard stem
    seen = []
    model.body.conv1.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[-1]))
    model.eval()(torch.zeros(2, 3, 16, 16))
    assert seen == [40]  # the 16 px images were resized to input_size


def test_missing_imagenet_weights_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise OSError("offline")  # what torchvision's download raises without the network (URLError is an OSError)

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"resnet50.*torchvision.models.resnet50\(weights='DEFAULT'\)"):
        build_classifier("resnet50", 3, pretrained=True, input_size=32)


def test_a_linear_probe_trains_only_the_head(smoke, torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    c = _classify(smoke, backbone="resnet18", pretrained=True, input_size=32, train="linear_probe", lr=0.1)
    before = build_classifier("resnet18", 3, pretrained=True, input_size=32).state_dict()
    after = train_classifier(_data(), RunSpec("none", 0), c, 16).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.weight", "head.bias"}  # the body, its batch-norm statistics included, is untouched
    tuned = train_classifier(_data(), RunSpec("none", 0), c.model_copy(update={"train": "finetune"}), 16)
    assert not torch.equal(tuned.state_dict()["body.conv1.weight"], before["body.conv1.weight"])


def test_a_probe_without_pretrained_weights_is_refused(smoke):
    with pytest.raises(ValueError, match="classify.train: linear_probe"):
        smoke.classify.model_validate({**smoke.classify.model_dump(), "train": "linear_probe"})


def test_epochs_set_the_steps_and_warm_up_ramps_the_rate(smoke):
    c = _classify(smoke, epochs=2.0, batch_size=5, warmup_steps=2, lr=0.3, label_smoothing=0.1)
    assert c.steps_for(12) == 5  # ceil(2 x 12 / 5)
    seen, rates = [], []
    import mvc.classifiers as classifiers

    real = classifiers.lr_schedule

    def watched(opt, steps, warmup):
        sched = real(opt, steps, warmup)
        opt.register_step_post_hook(lambda o, *a: rates.append(o.param_groups[0]["lr"]))
        return sched

    classifiers.lr_schedule = watched
    try:
        train_classifier(_data(), RunSpec("none", 0), c, 16, on_batch=lambda *a: seen.append(1))
    finally:
        classifiers.lr_schedule = real
    assert len(seen) == 5  # the steps of two epochs
    from mvc.classify import result_row

    assert result_row(smoke.model_copy(update={"classify": c}), RunSpec("none", 0), 0.5, 0.9, 12)["steps"] == 5
    assert rates[0] < rates[1] < 0.3 + 1e-9 and rates[2] == pytest.approx(0.3)  # linear warm-up, then the cosine


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "tiny_imagenet", "caltech101", "brain_tumor_mri"])
def test_every_paper_dataset_has_a_full_data_profile(dataset):
    few, full = (load_config(REPO / "params" / f"{name}.yaml") for name in (dataset, f"{dataset}_full"))
    assert full.data.dataset == few.data.dataset and full.data.shots is None and few.data.shots is not None
    assert full.classify.epochs >= 120 and full.replicates >= 3
    assert few.classify.backbone == "resnet50" and few.classify.pretrained and few.classify.input_size >= 224


def test_a_study_without_its_weights_stops_before_any_work_naming_each(tmp_path, monkeypatch):
    from mvc.study import run_study

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))  # read at import
    with pytest.raises(FileNotFoundError) as err:
        run_study(REPO / "params" / "cifar10.yaml", overrides=[f"runs_root={tmp_path / 'runs'}",
                                                               f"reports_root={tmp_path / 'reports'}"])
    said = str(err.value)
    for needed in ("backbone.model: stable-diffusion-v1-5/stable-diffusion-v1-5", "caption.model: Salesforce/blip2",
                   "classify.backbone: resnet50", "huggingface-cli download stable-diffusion-v1-5"):
        assert needed in said
    assert not (tmp_path / "runs" / "cifar10").exists()  # nothing started


def test_cached_weights_pass_the_check(tmp_path, monkeypatch, tiny_sd, tiny_blip2):
    from mvc.weights import required_weights

    save_random_torchvision_weights("resnet50", tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cfg = load_config(REPO / "params" / "cifar10.yaml", [f"backbone.model={tiny_sd}", f"caption.model={tiny_blip2}"])
    assert [w.cached for w in required_weights(cfg)] == [True, True, True]


def test_the_gpu_bill_counts_what_the_params_make_the_study_do():
    import json

    from mvc import gpu_bill as bill

    measured = json.loads((REPO / "benchmarks" / "gpu_sd15_h200.json").read_text())
    assert bill.FINETUNE_SAMPLES_PER_S == pytest.approx(measured["train"]["memory_gc_bf16"]["4"]["samples_per_s"],
                                                        abs=1e-3)
    assert bill.MVC_IMAGES_PER_S == pytest.approx(measured["generate"]["mvc_bf16_compiled"]["images_per_s"], abs=1e-3)
    host = json.loads((REPO / "benchmarks" / "classifier_host_cost.json").read_text())["slowest_ms_per_image"]
    assert {str(k): v for k, v in bill.HOST_MS_PER_IMAGE.items()} == host  # the classifier step's measured floor
    cfg = load_config(REPO / "params" / "cifar10.yaml")
    rows = {r["stage"].split()[0]: r["s"] for r in bill.gpu_bill(cfg)}
    one = {r["stage"].split()[0]: r["s"] for r in bill.gpu_bill(load_config(REPO / "params" / "cifar10.yaml",
                                                                            ["replicates=1", "classify.seeds=[0]"]))}
    assert rows["finetune"] == pytest.approx(3 * one["finetune"]) and rows["generate"] == pytest.approx(
        3 * one["generate"])  # every replicate fine-tunes and generates
    assert rows["classify"] == pytest.approx(3 * one["classify"])  # a run per seed
    same_sets = ["generate.sets=[sd_naive, sd_img2img, dafusion, sd_finetuned]", "generate.modes=[coarse, fine, none]"]
    full = {r["stage"].split()[0]: r["s"] for r in bill.gpu_bill(load_config(REPO / "params" / "cifar10_full.yaml",
                                                                             same_sets))}
    assert full["generate"] == pytest.approx(rows["generate"] * 45_000 / 1_000)  # every labelled image generates
    more = {r["stage"].split()[0]: r["s"] for r in bill.gpu_bill(load_config(
        REPO / "params" / "cifar10.yaml", ["generate.dafusion_images_per_source=20"]))}
    mean_t0 = sum(cfg.generate.dafusion_strengths) / len(cfg.generate.dafusion_strengths)
    assert more["generate"] - rows["generate"] == pytest.approx(  # DA-Fusion's M, at two passes and its mean t0
        3 * 1_000 * 10 * 2 / 3 * mean_t0 / bill.MVC_IMAGES_PER_S)
    assert rows["finetune"] - bill.gpu_bill(load_config(REPO / "params" / "cifar10.yaml", [
        "generate.sets=[sd_naive, sd_img2img, sd_finetuned]", "classify.methods=[none, mvc]"]))[1]["s"] == \
        pytest.approx(3 * 10 * 1000 * 4 / bill.FINETUNE_SAMPLES_PER_S)  # textual inversion: 10 classes x 1000 x 4
    assert bill.gpu_bill(load_config(REPO / "params" / "digits.yaml")) == []  # a dataset of unknown size: no bill


@pytest.mark.parametrize("combine", ["own", "class", "concat", "synthetic_only"])
def test_each_way_of_combining_real_and_synthetic_images(smoke, combine):
    """own: a real image's slot goes to one of its own synthetics; class: to any of its class; concat: the pooled
    sets (3 synthetics per real image: 3 of every 4 slots, whatever p_synthetic); synthetic_only: every slot."""
    from mvc.classifiers import SyntheticSampler

    data = _data(n=12, classes=3)
    sources = np.repeat(np.arange(12), 3)  # each synthetic image's pixels name its source row
    data.synthetic["mvc_coarse"] = (torch.from_numpy(sources.astype(np.uint8))[:, None, None, None].expand(
        -1, 3, 16, 16).clone(), sources, np.tile(np.arange(3), 12))
    sampler = SyntheticSampler(data, ["mvc_coarse"], None, combine)
    rows = np.repeat(np.arange(12), 400)
    out, used = sampler(rows, 0.2, np.random.default_rng(0), data.train_x[rows])
    expected = {"own": 0.2, "class": 0.2, "concat": 0.75, "synthetic_only": 1.0}[combine]
    assert used.mean() == pytest.approx(expected, abs=0.03)
    drawn = out[torch.from_numpy(used)][:, 0, 0, 0].numpy().astype(int)  # the source row of each drawn image
    labels = data.train_y.numpy()
    assert (labels[drawn] == labels[rows[used]]).all()  # always an image of the slot's class
    own = (drawn == rows[used]).mean()
    assert own == 1.0 if combine in ("own", "synthetic_only") else own < 0.5  # class-wide: 4 sources per class
    c = _classify(smoke, combine=combine, steps=2, batch_size=4)
    train_classifier(data, RunSpec("mvc", 0, synthetic_sets=("mvc_coarse",), p_synthetic=0.2), c, 16)  # it trains
