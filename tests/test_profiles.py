"""Dress rehearsals: every paper profile run end to end AS SHIPPED, overriding only where models come from (tiny
random models saved to disk), where the data lies (a fixture in the dataset's real on-disk format) and sizes
(steps, images, resolution). The overrides allowed are listed once, below; no method setting is overridden.

What runs on this CPU as the profile says: BLIP-2 captioning, the backbone loaded from a folder, bf16 autocast
fine-tuning with gradient accumulation, gradient checkpointing and EMA, DPM-Solver++ sampling, Inception features
for FID/KID (from a local weights file), the ImageNet ResNet-50 (shape-true random weights where torchvision
reads them) fine-tuned with SGD, warm-up and label smoothing. What falls back on a CPU, with a
logged reason: `torch.compile` of the UNet (`finetune.compile`, `generate.compile`), and bf16 weights in
generation (fp32 on a CPU).
"""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from mvc.config import load_config
from tests.conftest import REPO, run_until
from tests.test_data import FIXTURES

# field -> why it may be overridden in a rehearsal
ALLOWED_OVERRIDES = {
    "runs_root": "where", "reports_root": "where", "device": "where",
    "backbone.model": "model source", "caption.model": "model source", "metrics.inception_weights": "model source",
    "data.root": "data location",
    "data.shots": "size", "data.val_per_class": "size", "data.resolution": "size", "backbone.resolution": "size",
    "caption.max_new_tokens": "size", "caption.batch_size": "size",
    "finetune.steps": "size", "finetune.batch_size": "size", "finetune.lr_warmup_steps": "size",
    "finetune.checkpoint_every": "size", "generate.steps": "size", "generate.images_per_source": "size",
    "generate.batch_size": "size", "metrics.kid_subset_size": "size", "metrics.kid_subsets": "size",
    "metrics.judge_steps": "size", "classify.steps": "size", "classify.batch_size": "size", "classify.seeds": "size",
    "classify.epochs": "size", "classify.warmup_steps": "size", "classify.input_size": "size", "replicates": "size",
    "data.labelled_per_class": "size", "textual_inversion.steps": "size", "textual_inversion.checkpoint_every": "size",
    "generate.dafusion_images_per_source": "size",
}
PROFILES = ["cifar10", "cifar100", "tiny_imagenet", "caltech101", "brain_tumor_mri", "imagefolder"]


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    from tests.tiny_models import save_random_inception

    path = tmp_path_factory.mktemp("inception") / "weights-inception-2015-12-05-6726825d.pth"
    save_random_inception(path)
    return path


def rehearsal_overrides(tmp_path, root, tiny_sd, tiny_blip2, inception) -> list[str]:
    overrides = [
        f"runs_root={tmp_path / 'runs'}", f"reports_root={tmp_path / 'reports'}", "device=cpu",
        f"backbone.model={tiny_sd}", f"caption.model={tiny_blip2}", f"metrics.inception_weights={inception}",
        f"data.root={root}", "data.shots=2", "data.val_per_class=1", "data.resolution=16", "backbone.resolution=16",
        "caption.max_new_tokens=3", "finetune.steps=2", "finetune.batch_size=4", "finetune.lr_warmup_steps=0",
        "finetune.checkpoint_every=1", "generate.steps=4", "generate.images_per_source=2", "metrics.kid_subset_size=2",
        "metrics.kid_subsets=5", "metrics.judge_steps=2", "classify.steps=2", "classify.epochs=null",
        "classify.warmup_steps=1", "classify.batch_size=4", "classify.input_size=32", "classify.seeds=[0,1]",
        "replicates=1", "data.labelled_per_class=3", "textual_inversion.steps=2",
        "textual_inversion.checkpoint_every=1", "generate.dafusion_images_per_source=2",
    ]
    assert {o.split("=")[0] for o in overrides} <= set(ALLOWED_OVERRIDES), "a rehearsal overrides a method setting"
    return overrides


@pytest.fixture(scope="module")
def imagenet_resnet50(tmp_path_factory):
    """Shape-true random ResNet-50 weights where torchvision reads the ImageNet ones (the torch hub cache)."""
    from tests.tiny_models import save_random_torchvision_weights

    home = tmp_path_factory.mktemp("torch_home")
    save_random_torchvision_weights("resnet50", home)
    return home


@pytest.mark.slow
@pytest.mark.parametrize("profile", PROFILES)
def test_paper_profile_dress_rehearsal(tmp_path, tiny_sd, tiny_blip2, inception_file, imagenet_resnet50, profile,
                                       caplog, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(imagenet_resnet50))
    make, flag = FIXTURES[profile]
    root = tmp_path / "data"
    root.mkdir()
    make(root, flag) if flag is not None else make(root)
    shipped = load_config(REPO / "params" / f"{profile}.yaml")
    cfg = load_config(REPO / "params" / f"{profile}.yaml",
                      rehearsal_overrides(tmp_path, root, tiny_sd, tiny_blip2, inception_file))
    sections = ("caption", "text", "finetune", "textual_inversion", "generate", "metrics", "classify")
    for section in sections:  # the method as shipped
        kept = {k: v for k, v in getattr(shipped, section).model_dump().items()
                if f"{section}.{k}" not in ALLOWED_OVERRIDES}
        assert kept == {k: v for k, v in getattr(cfg, section).model_dump().items() if k in kept}, section
    assert cfg.metrics.feature_extractor == "inception" and cfg.finetune.mixed_precision == "bf16"
    assert (shipped.classify.backbone, shipped.classify.pretrained, shipped.classify.input_size) == \
        ("resnet50", True, 224) and shipped.replicates >= 3  # the field's classifier, replicated (docs/protocol.md)
    with caplog.at_level(logging.WARNING):
        run_until(cfg, "report")
    assert "finetune.compile: torch.compile skipped on cpu" in caplog.text  # the logged fallback
    results = pd.read_csv(cfg.paths.results)
    assert set(results["method"]) == set(cfg.classify.methods) and results["seed"].nunique() == 2
    metrics = pd.read_csv(cfg.paths.image_metrics)
    assert (metrics["feature_extractor"] == "inception").all() and metrics["fid"].notna().all()
    assert metrics["images_per_class"].nunique() == 1  # every set measured at one, class-stratified size
    assert (cfg.paths.report / "index.html").exists()
    from diffusers import StableDiffusionInstructPix2PixPipeline

    assert StableDiffusionInstructPix2PixPipeline.from_pretrained(str(cfg.paths.mvc_model)).unet.config.in_channels == 8
    if "dafusion" in cfg.generate.sets:  # DA-Fusion's tokens in CLIP's tokenizer, its images from them
        from transformers import CLIPTokenizer

        folder = cfg.paths.model("dafusion", "finetune_dafusion")
        tokens = CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer")
        assert "<mvc-class-0>" in tokens.get_vocab() and "dafusion" in set(metrics["synthetic_set"])
