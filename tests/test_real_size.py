"""Stable Diffusion at real size, checked without a GPU: the memory model against its measurements, VAE batches
bounded by memory, the preview on the study's device, compile before DDP, models released between fine-tunings,
float32 conditioning latents around a bf16 UNet, no emulated bf16 autocast on a CPU, `mvc check --gpu-memory`."""

from __future__ import annotations

import gc
import json
import logging
import weakref

import numpy as np
import pytest
import torch

from mvc import components, finetune, footprint, generate, memory, runtime, samplers, training_batches
from mvc.artifacts import DiffusionImages, load_caption_embeddings
from tests.conftest import REPO, smoke_through_backbone


@pytest.fixture
def prepared(tmp_path):
    return smoke_through_backbone(tmp_path, "finetune.steps=2", "finetune.checkpoint_every=2")


# ---- the memory model ----------------------------------------------------------------------------------------

def test_memory_coefficients_reproduce_the_committed_calibration():
    """Each measured unit of work (SD-1.5-shaped models at 512 px, one process each) within 10% of the model."""
    rows = json.loads((REPO / "benchmarks" / "memory_calibration.json").read_text())["rows"]
    coeff = {"vae_encode": footprint.ENCODE, "vae_decode": footprint.DECODE, "unet_train": footprint.TRAIN_CHECKPOINTED,
             "unet_train_full": footprint.TRAIN_FULL, "unet_sample": footprint.SAMPLE}
    weights_states = {"vae_encode": 1, "vae_decode": 1, "unet_train": 4, "unet_train_full": 4, "unet_sample": 1}
    assert {r["case"] for r in rows} == set(coeff)
    for r in rows:
        predicted = r["param_gib"] * weights_states[r["case"]] + sum(np.multiply(coeff[r["case"]], (1, r["batch"])))
        assert predicted == pytest.approx(r["peak_above_base_gib"], rel=0.10), r


def test_encoding_batch_is_bounded_by_memory_not_fixed_at_64():
    sd = footprint.sd15_vae_config()
    assert footprint.encode_batch_size(sd, 512, capacity_gib=24) == 9  # 6 GiB / 0.64 GiB per image
    assert footprint.encode_batch_size(sd, 512, capacity_gib=4) == 1
    assert footprint.encode_batch_size(sd, 256, capacity_gib=24) == 37  # a quarter of the pixels
    assert footprint.encode_batch_size({"block_out_channels": [32, 64]}, 16, capacity_gib=24) == 64  # the surrogate


def test_encode_latents_batches_by_memory_and_equals_one_batch(prepared, monkeypatch):
    bb = components.load_backbone(prepared.paths.backbone)
    ids = load_caption_embeddings(prepared).frame["image_id"].to_numpy()
    whole = components.encode_latents(bb.vae, DiffusionImages(prepared, ids), batch_size=len(ids))
    calls = []
    encode = bb.vae.encode
    monkeypatch.setattr(bb.vae, "encode", lambda x: calls.append(len(x)) or encode(x))
    monkeypatch.setattr(components, "memory_capacity_gib", lambda device: 1e-6)  # almost no memory: batch 1
    lazy = components.encode_latents(bb.vae, DiffusionImages(prepared, ids))
    assert calls == [1] * len(ids)
    torch.testing.assert_close(lazy, whole, rtol=1e-5, atol=1e-5)


def test_mvc_check_refuses_what_cannot_fit_a_card_and_names_the_setting(capsys):
    from mvc.cli import main

    assert main(["check", str(REPO / "params" / "cifar10.yaml"), "--gpu-memory", "24"]) == 0
    out = capsys.readouterr().out
    for stage in ("caption:", "latent cache:", "finetune step:", "generate batch:"):
        assert f"#   {stage}" in out
    assert main(["check", str(REPO / "params" / "cifar10.yaml"), "--gpu-memory", "16"]) == 2
    err = capsys.readouterr().err
    assert "finetune step needs about" in err and "finetune.optimizer: adamw8bit" in err and "ema_offload" in err
    assert main(["check", str(REPO / "params" / "cifar10_16gb.yaml"), "--gpu-memory", "16"]) == 0
    assert "every stage fits" in capsys.readouterr().out


def test_memory_model_parts_follow_the_settings():
    from mvc.config import load_config

    def step(*overrides):
        cfg = load_config(REPO / "params" / "cifar10.yaml", list(overrides))
        return next(p for p in memory.predict(cfg, "cuda", 24) if p.stage == "finetune step")

    shipped, low = step(), step("finetune.optimizer=adamw8bit", "finetune.ema_offload=true")
    assert shipped.parts["optimizer states"] == pytest.approx(4 * low.parts["optimizer states"])
    assert "EMA copy" in shipped.parts and "EMA copy" not in low.parts
    assert step("finetune.batch_size=8").parts["activations"] > shipped.parts["activations"]
    assert step("finetune.gradient_checkpointing=false").parts["activations"] > shipped.parts["activations"]


def test_a_study_that_cannot_fit_is_refused_before_any_work(tmp_path):
    from mvc.config import load_config
    from mvc.memory import DoesNotFit
    from mvc.resources import check_memory

    cfg = load_config(REPO / "params" / "cifar10.yaml", [f"runs_root={tmp_path / 'runs'}"])
    with pytest.raises(DoesNotFit, match="finetune step"):
        check_memory(cfg, available_gb=16, device="cuda")
    assert not (tmp_path / "runs").exists()


# ---- the stages at real size ---------------------------------------------------------------------------------

def test_preview_runs_on_the_study_device_and_encodes_only_what_it_shows(prepared, monkeypatch):
    finetune.finetune(prepared, show_progress=False)
    devices, encoded = [], []
    load = generate.load_generation_models
    monkeypatch.setattr(generate, "pick_device", lambda requested: "cpu:0")  # what the study picked
    monkeypatch.setattr(generate, "load_generation_models",
                        lambda cfg, emb, device, *a, **k: devices.append(device) or load(cfg, emb, device, *a, **k))
    encode = generate.encode_latents
    monkeypatch.setattr(generate, "encode_latents", lambda vae,
                        images: encoded.append(len(images)) or encode(vae, images))
    rows = generate.checkpoint_previews(prepared, n_sources=2, per_source=2)
    assert devices == ["cpu:0"]
    assert sum(encoded) == 2 < len(load_caption_embeddings(prepared).frame)  # the two shown, not every image
    assert len(rows) >= 2 and all(len(images) == 3 for _, images in rows)


def test_compile_wraps_the_bare_unet_before_accelerate_prepares_it(prepared, monkeypatch):
    from accelerate import Accelerator

    events = []
    prepare = Accelerator.prepare
    monkeypatch.setattr(Accelerator, "prepare", lambda self, *a: events.append("prepare") or prepare(self, *a))
    monkeypatch.setattr(finetune, "maybe_compile",
                        lambda module, enabled, device,
                        field: events.append(("compile", type(module).__name__, enabled))
                        or module)
    cfg = prepared.model_copy(update={"finetune": prepared.finetune.model_copy(update={"compile": True})})
    finetune.train(cfg, show_progress=False)
    assert events[:2] == [("compile", "UNet2DConditionModel", True), "prepare"]


def test_two_fine_tunings_in_a_row_release_the_first(prepared, monkeypatch):
    """The first fine-tuning's UNet, optimizer and EMA are gone when it returns: the second starts from the memory
    the first started from (live tensor bytes), so two SD-sized fine-tunings peak as one."""
    cfg = prepared.model_copy(update={"finetune": prepared.finetune.model_copy(update={"use_ema": True})})
    built = []
    widen = finetune.widen_conv_in
    monkeypatch.setattr(finetune, "widen_conv_in", lambda unet: built.append(weakref.ref(unet)) or widen(unet))

    def live_bytes() -> int:
        gc.collect()
        return sum(t.untyped_storage().nbytes() for t in gc.get_objects() if torch.is_tensor(t))

    before = live_bytes()
    finetune.train(cfg, show_progress=False)
    after_one = live_bytes()
    assert built[0]() is None, "the first fine-tuning's UNet outlived it"
    unet_bytes = sum(p.numel() * 4 for p in components.load_backbone(cfg.paths.mvc_model).unet.parameters())
    assert after_one - before < 0.5 * unet_bytes
    finetune.train(cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"seed": 1})}),
                   show_progress=False)  # the model folder exists: a second unit in the same process
    assert live_bytes() - before < 0.5 * unet_bytes


def test_conditioning_latents_at_generation_equal_those_of_training_in_bf16(prepared):
    finetune.finetune(prepared, show_progress=False)
    emb = load_caption_embeddings(prepared)
    bb = components.load_backbone(prepared.paths.mvc_model)
    trained = training_batches.training_data(prepared, bb.vae).cond_latents
    unet, vae, _, cond = generate.load_generation_models(prepared, emb, "cpu", torch.bfloat16,
                                                         sets=["mvc_coarse"])["mvc"]
    assert unet.dtype == torch.bfloat16 and vae.dtype == torch.float32
    rows = np.arange(len(emb.frame))
    torch.testing.assert_close(cond[rows], trained, rtol=0, atol=0)
    # the bf16 UNet is called with float32 and answers in float32: the sampler's arithmetic stays float32
    x = torch.zeros_like(cond[rows[:2]])
    out = unet(torch.cat([x, cond[rows[:2]]], dim=1), torch.tensor([10, 10]),
               encoder_hidden_states=emb.embeddings[:2]).sample
    assert out.dtype == torch.float32


def test_sdedit_keeps_float32_latents_around_a_bf16_unet(prepared):
    from mvc.artifacts import backbone_source

    bb = components.load_backbone(backbone_source(prepared), unet_dtype=torch.bfloat16)
    bb.unet = runtime.run_in_dtype(bb.unet)
    pipe = generate.img2img_pipeline(bb, "ddim", "cpu")
    assert pipe.vae.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
    seen = []
    bb.unet.register_forward_hook(lambda m, a, k, out: seen.append(k["encoder_hidden_states"].dtype),
                                  with_kwargs=True)
    sources = np.full((2, 16, 16, 3), 128, np.uint8)
    out = samplers.sdedit(pipe, sources, ["a photo of a 0"] * 2, [0, 1], strength=prepared.generate.img2img_strength,
                          steps=prepared.generate.steps, guidance=3.0)
    assert out.shape == (2, 16, 16, 3) and seen and set(seen) == {torch.bfloat16}  # cast on the way in only


@pytest.mark.parametrize("native, device, asked, expected", [
    (False, "cpu", "bf16", "no"), (True, "cpu", "bf16", "bf16"), (True, "cpu", "fp16", "no"),
    (False, "cuda", "bf16", "bf16"), (False, "cpu", "no", "no")])
def test_bf16_autocast_on_a_cpu_only_where_it_is_native(monkeypatch, caplog, native, device, asked, expected):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    with caplog.at_level(logging.WARNING):
        assert runtime.effective_mixed_precision(asked, device) == expected
    assert ("running in float32 on the CPU" in caplog.text) == (asked != expected)


def test_fine_tuning_records_the_precision_it_ran_with(prepared, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    cfg = prepared.model_copy(update={"finetune": prepared.finetune.model_copy(update={"mixed_precision": "bf16"})})
    assert finetune.train(cfg, show_progress=False)["mixed_precision"] == "no"


def test_eight_bit_adamw_and_offloaded_ema_train(prepared):
    cfg = prepared.model_copy(update={"finetune": prepared.finetune.model_copy(
        update={"optimizer": "adamw8bit", "use_ema": True, "ema_offload": True})})
    summary = finetune.train(cfg, show_progress=False)
    assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
