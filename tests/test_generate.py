from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mvc import artifacts, generate, state
from mvc.generate import WorkItem, shard
from mvc.registry import set_guidance, set_images_per_source
from mvc.sampling import guided_eps


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sharding_covers_every_item_exactly_once(world):
    items = [WorkItem("mvc_coarse", s, j, 0) for s in range(7) for j in range(5)]
    shards = [shard(items, r, world) for r in range(world)]
    flat = [it for s in shards for it in s]
    assert sorted(flat, key=lambda i: (i.source_image_id, i.index)) == items
    assert len(flat) == len(set(flat))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_guidance_with_both_scales_one_is_the_conditional_prediction():
    from mvc.components import widen_conv_in
    from mvc.config import SurrogateConfig
    from mvc.surrogate import build_surrogate_unet

    s = SurrogateConfig(unet_channels=[8, 16], text_hidden_size=16, text_heads=2)
    torch.manual_seed(0)
    unet = widen_conv_in(build_surrogate_unet(s, 8)).eval()
    with torch.no_grad():
        for p in unet.conv_in.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # make the image channels matter
        z, cond = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
        text, empty = torch.randn(3, 5, 16), torch.randn(5, 16)
        t = torch.tensor(500)
        guided = guided_eps(unet, z, t, text, cond, empty, 1.0, 1.0)
        plain = unet(torch.cat([z, cond], 1), t, encoder_hidden_states=text).sample
        torch.testing.assert_close(guided, plain, rtol=1e-4, atol=1e-5)
        stronger = guided_eps(unet, z, t, text, cond, empty, 3.0, 1.5)
        assert not torch.allclose(stronger, plain)


def _pngs(cfg, name):
    return sorted(p.relative_to(cfg.paths.synthetic / name) for p in (cfg.paths.synthetic / name).rglob("*.png"))


def test_resume_after_a_kill_mid_batch_gives_exactly_the_expected_set(smoke_generated, tmp_path):
    cfg = smoke_generated
    names = artifacts.synthetic_set_names(cfg.generate)
    expected = {n: pd.read_csv(cfg.paths.synthetic / n / "manifest.csv") for n in names}
    # a second copy of the study, generation "killed" after one batch of one shard
    from tests.conftest import smoke_config

    other = smoke_config(tmp_path, "generate.batch_size=5")
    shutil.copytree(cfg.paths.run, other.paths.run)
    shutil.rmtree(other.paths.synthetic)
    (other.paths.stages / "generate.json").unlink()
    generate.generate_all(other, show_progress=False, max_batches=1)
    folder = other.paths.synthetic / "mvc_coarse"
    assert len(list(folder.rglob("*.png"))) == 5
    # what a kill mid-write leaves: a half-written manifest line and a stray temporary file
    with open(folder / ".manifest-0.csv", "a") as fh:
        fh.write("mvc_coarse-99-0,99,0,1,coa")
    (folder / "zero").mkdir(exist_ok=True)
    (folder / "zero" / ".mvc_coarse-1-1.png.abc123.png").write_bytes(b"\x89PNG half")
    out = generate.generate_all(other, show_progress=False)
    for name, frame in expected.items():
        got = out[name]
        assert got["image_id"].is_unique
        assert sorted(got["image_id"]) == sorted(frame["image_id"])
        for p in got["path"]:
            with Image.open(other.paths.synthetic / name / p) as im:
                im.load()  # complete, readable PNGs
    # the same seeds give the same images, whatever the batching and interruptions
    for name in expected:
        for p in expected[name]["path"][:6]:
            a = np.asarray(Image.open(cfg.paths.synthetic / name / p))
            b = np.asarray(Image.open(other.paths.synthetic / name / p))
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert state.stage_info(other, "generate")["images"] == {n: len(f) for n, f in expected.items()}


def test_manifest_labels_and_counts(smoke_generated):
    cfg = smoke_generated
    splits = pd.read_csv(cfg.paths.splits)
    train = splits[splits["split"] == "train"]
    for name in artifacts.synthetic_set_names(cfg.generate):
        m = pd.read_csv(cfg.paths.synthetic / name / "manifest.csv")
        assert len(m) == len(train) * set_images_per_source(cfg.generate, name)  # DA-Fusion's M is its own
        label = dict(zip(train["image_id"], train["label"]))
        assert (m["label"] == m["source_image_id"].map(label)).all()
        assert list(m.columns) == generate.MANIFEST_COLUMNS


def test_img2img_set_is_the_backbones_sdedit_seeded_per_image(smoke_generated):
    from mvc.artifacts import backbone_source, load_manifest
    from mvc.components import load_backbone
    from mvc.generate import img2img_pipeline
    from mvc.samplers import sdedit

    cfg = smoke_generated
    manifest = load_manifest(cfg, "sd_img2img")
    assert (manifest["mode"] == "img2img").all() and len(manifest) == 12 * cfg.generate.images_per_source
    pipe = img2img_pipeline(load_backbone(backbone_source(cfg)), cfg.generate.scheduler, "cpu")
    sources = np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)
    prompts = ["a photo of the digit one"] * 2
    g = cfg.generate
    kw = {"strength": g.img2img_strength, "steps": g.steps, "guidance": set_guidance(g, "sd_img2img")[0]}
    a = sdedit(pipe, sources, prompts, [1, 2], **kw)
    b = sdedit(pipe, sources[:1], prompts[:1], [1], **kw)
    assert a.shape == (2, 16, 16, 3) and a.dtype == np.uint8
    assert np.abs(a[0].astype(int) - b[0].astype(int)).max() <= 1  # the same seed, whatever the batch
    assert not np.array_equal(a[0], a[1])


def test_synthetic_images_are_drawn_at_the_classifiers_resolution(tmp_path):
    """imagefolder_cpu's layout on the smoke study: 32 px images through a three-level VAE (8x8 latents): the PNGs
    are 32 px as drawn, never upsampled from a smaller generation size."""
    from PIL import Image

    from tests.conftest import run_until, smoke_config

    cfg = smoke_config(tmp_path, "data.resolution=32", "backbone.resolution=32",
                       "backbone.surrogate.vae_channels=[8, 16, 16]", "generate.sets=[]", "generate.modes=[coarse]",
                       "classify.methods=[none, mvc]")
    run_until(cfg, "generate")
    pngs = sorted((cfg.paths.synthetic / "mvc_coarse").rglob("*.png"))
    assert pngs and {Image.open(p).size for p in pngs} == {(32, 32)}
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(cfg.paths.backbone, subfolder="vae")
    assert vae.config.sample_size == 32 and len(vae.config.block_out_channels) == 3
