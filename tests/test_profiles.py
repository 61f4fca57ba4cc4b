"""Every paper profile end to end, with only `--set` overrides: its models pointed at tiny local folders (a
Stable-Diffusion-shaped pipeline, a BLIP-2) and its data root at a small fixture in the dataset's real format."""

from __future__ import annotations

import pandas as pd
import pytest

from mvc.config import load_config
from tests.conftest import REPO
from tests.test_data import FIXTURES



@pytest.mark.parametrize("profile, extractor", [("cifar10", "classifier"), ("cifar100", "classifier"),
                                                 ("tiny_imagenet", "efficientnet_lite0"), ("caltech101", "classifier"),
                                                 ("brain_tumor_mri", "classifier")])
def test_paper_profile_end_to_end(tmp_path, tiny_sd, tiny_blip2, profile, extractor):
    from mvc.stages import STAGES

    make, flag = FIXTURES[profile]
    root = tmp_path / "data"
    root.mkdir()
    make(root, flag) if flag is not None else make(root)
    overrides = [
        f"runs_root={tmp_path / 'runs'}", f"reports_root={tmp_path / 'reports'}", "device=cpu",
        f"data.root={root}", "data.shots=2", "data.val_per_class=1", "data.resolution=16",
        f"caption.model={tiny_blip2}", "caption.max_new_tokens=3",
        f"backbone.model={tiny_sd}", "backbone.resolution=16",
        "finetune.steps=2", "finetune.batch_size=4", "finetune.gradient_accumulation_steps=1", "finetune.lr_warmup_steps=0",
        "finetune.checkpoint_every=1", "finetune.compile=false", "generate.compile=false",
        "generate.steps=2", "generate.images_per_source=2", f"metrics.feature_extractor={extractor}",
        "metrics.kid_subset_size=2", "metrics.judge_steps=2", "classify.steps=2", "classify.batch_size=4",
        "classify.seeds=[0,1]",
    ]
    cfg = load_config(REPO / "params" / f"{profile}.yaml", overrides)
    assert cfg.backbone.kind == "pretrained" and cfg.caption.backend == "blip2"  # the profile's own models
    assert cfg.finetune.mixed_precision == "bf16" and cfg.finetune.use_ema and cfg.finetune.gradient_checkpointing
    for stage in STAGES:
        stage.function(cfg, show_progress=False)
    results = pd.read_csv(cfg.paths.results)
    assert set(results["method"]) == set(cfg.classify.methods) and results["seed"].nunique() == 2
    assert (cfg.paths.report / "index.html").exists()
    from diffusers import StableDiffusionInstructPix2PixPipeline

    assert StableDiffusionInstructPix2PixPipeline.from_pretrained(str(cfg.paths.mvc_model)).unet.config.in_channels == 8
