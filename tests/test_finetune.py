from __future__ import annotations

import contextlib
import os

import numpy as np
import pandas as pd
import pytest
import torch

from mvc import artifacts, components, finetune, state, training_batches
from tests.conftest import REPO, launch_two_processes, run_until, smoke_config, smoke_through_backbone


@pytest.fixture
def prepared(tmp_path):
    return smoke_through_backbone(tmp_path, "finetune.steps=6", "finetune.checkpoint_every=2")


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(prepared):
    bb = components.load_backbone(prepared.paths.backbone)
    batch = training_batches.training_data(prepared, bb.vae)
    unet = components.widen_conv_in(bb.unet).train()
    rng = np.random.default_rng(0)
    latents, cond, emb = training_batches.make_batch(batch, prepared, rng, 12)
    opt = torch.optim.Adam(unet.parameters(), lr=1e-3)

    def loss():
        return components.diffusion_loss(unet, bb.scheduler, latents, emb, cond, torch.Generator().manual_seed(0))

    first = loss().item()
    for _ in range(15):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.8 * first


def test_resume_continues_step_optimizer_and_scheduler(prepared):
    finetune.finetune(prepared, show_progress=False, max_steps=4)  # "killed" after step 4
    ckpts = artifacts.list_checkpoints(prepared.paths.finetune_work / "checkpoints")
    assert [p.name for p in ckpts] == ["checkpoint-2", "checkpoint-4"]
    opt_state = torch.load(ckpts[-1] / "optimizer.bin", weights_only=False)
    sched_state = torch.load(ckpts[-1] / "scheduler.bin", weights_only=False)
    assert not (prepared.paths.mvc_model).exists()
    finetune.finetune(prepared, show_progress=False)
    info = state.stage_info(prepared, "finetune")
    assert info["steps"] == 6
    loss = artifacts.load_loss(prepared)
    assert loss["step"].tolist() == list(range(6))  # no step lost or logged twice
    # the resumed run started from the saved optimizer and scheduler state: step counts carried on
    assert sched_state["last_epoch"] == 4
    assert all(s["step"] == 4 for s in opt_state["state"].values())
    final = torch.load(artifacts.list_checkpoints(prepared.paths.finetune_work / "checkpoints")[-1] / "scheduler.bin",
                       weights_only=False)
    assert final["last_epoch"] == 6


def test_resumed_run_matches_an_uninterrupted_one(tmp_path):
    a = smoke_config(tmp_path / "a", "finetune.steps=4", "finetune.checkpoint_every=2")
    b = smoke_config(tmp_path / "b", "finetune.steps=4", "finetune.checkpoint_every=2")
    for cfg in (a, b):
        run_until(cfg, "backbone")
    finetune.finetune(a, show_progress=False)
    finetune.finetune(b, show_progress=False, max_steps=2)
    finetune.finetune(b, show_progress=False)
    np.testing.assert_allclose(artifacts.load_loss(a)["loss"], artifacts.load_loss(b)["loss"], rtol=1e-4)


def test_corrupt_checkpoint_gives_a_clear_error(prepared):
    finetune.finetune(prepared, show_progress=False, max_steps=2)
    ckpt = artifacts.list_checkpoints(prepared.paths.finetune_work / "checkpoints")[-1]
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(finetune.CheckpointError) as err:
        finetune.finetune(prepared, show_progress=False)
    assert str(ckpt) in str(err.value) and "Delete" in str(err.value)


def test_saved_model_loads_in_instruct_pix2pix_pipeline_and_generates(smoke_generated):
    from diffusers import StableDiffusionInstructPix2PixPipeline
    from PIL import Image

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(smoke_generated.paths.mvc_model))
    assert pipe.unet.config.in_channels == 8
    out = pipe("a photo of the digit one", image=Image.new("RGB", (16, 16), "white"), num_inference_steps=2,
               output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 16, 16, 3) and np.isfinite(out).all()


def test_a_text_only_batch_is_each_images_own_caption_and_no_image():
    """The sd_finetuned baseline's batches: no conditioning image, the text dropped as often as MVC drops it in
    total (text alone or both), and MVC's caption mixing (own caption only with mixing_mode none)."""
    from mvc.config import load_config

    cfg = load_config(REPO / "params/smoke.yaml", ["finetune.drop_text=0.1", "finetune.drop_both=0.2"])
    labels = np.repeat(np.arange(4), 5)
    data = training_batches.TrainingData(latents=torch.randn(20, 4, 2, 2), cond_latents=torch.randn(20, 4, 2, 2),
                                 labels=labels, embeddings=torch.randn(20, 3, 8), empty=torch.zeros(3, 8))
    batch = training_batches.draw_batch(data, cfg, np.random.default_rng(0), 4000, text_only=True, mixing_mode="none")
    assert (batch.plan.indices[:, 0] == batch.targets).all() and batch.plan.indices.shape[1] == 1
    assert batch.cond.shape[1] == 0 and not batch.drop_image.any()
    kept = ~batch.drop_text
    assert torch.equal(batch.text[kept], data.embeddings[batch.targets[kept]])
    assert (batch.text[batch.drop_text] == 0).all() and abs(batch.drop_text.mean() - 0.3) < 0.03
    latents, cond, text = training_batches.make_batch(data, cfg, np.random.default_rng(0), 8, "sd_finetuned")
    assert cond is None and latents.shape == (8, 4, 2, 2)
    mixed = training_batches.draw_batch(data, cfg, np.random.default_rng(0), 4000, text_only=True)  # its batches
    assert cfg.finetune.mixing.mode == "coarse+fine" and mixed.plan.indices.shape[1] > 1
    assert (mixed.plan.indices == mixed.targets[:, None]).any(1).all()  # the target's caption is in every mix
    assert mixed.cond.shape[1] == 0 and not mixed.drop_image.any()
    mvc = training_batches.draw_batch(data, cfg, np.random.default_rng(0), 4000)  # MVC's: mixed captions, an image
    assert mvc.plan.indices.shape[1] > 1 and mvc.cond.shape[1] == 4
    own = training_batches.draw_batch(data, cfg, np.random.default_rng(0), 4000, mixing_mode="none")  # the ablation's
    assert (own.plan.indices[:, 0] == own.targets).all() and own.plan.indices.shape[1] == 1 and own.cond.shape[1] == 4
    assert own.drop_image.any() and (own.partners != own.targets).any()


def test_the_no_mixing_ablation_is_mvc_fine_tuned_on_own_captions(smoke_generated):
    """mvc_nomix_trained: an image-conditioned model like MVC's, other weights; its set shares mvc_none's prompts
    (each image's own caption) and noise, so the two differ only in how the model was fine-tuned."""
    cfg = smoke_generated
    ablation = components.load_backbone(artifacts.model_path(cfg, "mvc_nomix_trained"))
    mvc = components.load_backbone(cfg.paths.mvc_model)
    assert ablation.unet.config.in_channels == mvc.unet.config.in_channels == 8
    assert not torch.equal(ablation.unet.conv_in.weight, mvc.unet.conv_in.weight)
    ours, theirs = (artifacts.load_manifest(cfg, n) for n in ("mvc_nomix_trained", "mvc_none"))
    assert (ours["mode"] == "none").all()
    assert ours[["source_image_id", "index", "seed"]].equals(theirs[["source_image_id", "index", "seed"]])


def test_text_only_baseline_is_a_fine_tuned_text_to_image_model(smoke_generated):
    """sd_finetuned: a StableDiffusionPipeline whose UNet keeps the backbone's inputs but not its weights; its set
    uses the naive set's prompts and noise, so the two differ only in the model."""
    from diffusers import StableDiffusionPipeline

    cfg = smoke_generated
    pipe = StableDiffusionPipeline.from_pretrained(str(artifacts.model_path(cfg, "sd_finetuned")))
    bb = components.load_backbone(cfg.paths.backbone)
    assert pipe.unet.config.in_channels == bb.unet.config.in_channels
    changed = [n for n, p in pipe.unet.named_parameters() if not torch.equal(p, bb.unet.get_parameter(n))]
    assert len(changed) > 0.5 * len(list(bb.unet.parameters()))
    tuned, naive = (artifacts.load_manifest(cfg, n) for n in ("sd_finetuned", "sd_naive"))
    assert tuned[["source_image_id", "index", "seed"]].equals(naive[["source_image_id", "index", "seed"]])
    x_tuned, _ = artifacts.load_synthetic(cfg, "sd_finetuned")
    x_naive, _ = artifacts.load_synthetic(cfg, "sd_naive")
    assert np.abs(x_tuned.astype(float) - x_naive.astype(float)).mean() > 1
    info = state.stage_info(cfg, "finetune_sd_finetuned")
    assert info["steps"] == cfg.finetune.steps
    assert (cfg.paths.run / "sd_finetuned").is_dir() and (cfg.paths.run / "finetune_sd_finetuned" / "loss.csv").exists()


def test_the_text_only_stage_is_skipped_without_its_set(tmp_path):
    cfg = smoke_through_backbone(tmp_path, "generate.sets=[sd_naive]", "classify.methods=[none]")
    assert finetune.finetune_model(cfg, "sd_finetuned", show_progress=False) is None  # the stage's reader: no model
    assert "skipped" in state.stage_info(cfg, "finetune_sd_finetuned")
    assert not (cfg.paths.run / "sd_finetuned").exists() and artifacts.trained_model(cfg, "sd_finetuned") is None


TWO_PROCESS_STEPS = ["finetune.steps=6", "finetune.checkpoint_every=2"]


def _two_process_args(cfg) -> list[str]:
    return ["finetune", str(REPO / "params/smoke.yaml"), f"--set=runs_root={cfg.paths.run.parent}",
            f"--set=reports_root={cfg.paths.report.parent}", "--set=device=cpu",
            *[f"--set={o}" for o in TWO_PROCESS_STEPS]]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """Fine-tuning over gloo in 2 processes, never interrupted: what the tests below check and compare against."""
    cfg = smoke_config(tmp_path_factory.mktemp("whole"), *TWO_PROCESS_STEPS)
    run_until(cfg, "backbone")
    out = launch_two_processes(*_two_process_args(cfg))
    assert out.returncode == 0, out.stderr[-3000:]
    return cfg


def test_two_processes_over_gloo(two_process_run):
    cfg = two_process_run
    info = state.stage_info(cfg, "finetune")
    assert info["world_size"] == 2
    loss = pd.read_csv(cfg.paths.finetune_work / "loss.csv")
    assert loss["step"].tolist() == list(range(6))
    per_rank = loss["loss_per_process"].str.split(" ", expand=True).astype(float)
    assert per_rank.shape[1] == 2 and (per_rank[0] != per_rank[1]).all()  # each rank drew its own batch and noise


def test_a_batch_that_cannot_be_split_evenly_over_the_processes_is_refused():
    assert finetune.per_process_batch(8, 2) == 4
    with pytest.raises(ValueError, match="finetune.batch_size=3"):
        finetune.per_process_batch(3, 2)
    with pytest.raises(ValueError, match="multiple of 4"):
        finetune.per_process_batch(2, 4)  # would silently become 4


def test_sampled_targets_vary_around_the_posterior_mode(prepared):
    bb = components.load_backbone(prepared.paths.backbone)
    mode = training_batches.training_data(prepared, bb.vae)
    sampled_ft = prepared.finetune.model_copy(update={"target_latents": "sample"})
    sampled_cfg = prepared.model_copy(update={"finetune": sampled_ft})
    sampled = training_batches.training_data(sampled_cfg, bb.vae)
    a = training_batches.draw_batch(mode, prepared, np.random.default_rng(0), 8)
    b = training_batches.draw_batch(sampled, sampled_cfg, np.random.default_rng(0), 8)
    c = training_batches.draw_batch(sampled, sampled_cfg, np.random.default_rng(0), 8)
    assert (a.targets == b.targets).all() and torch.equal(a.cond, b.cond)  # the same draw of everything else
    assert not torch.allclose(a.latents, b.latents) and torch.equal(b.latents, c.latents)  # seeded
    spread = (b.latents - a.latents).abs() / sampled.latent_std[b.targets]
    assert float(spread.mean()) < 2.0  # draws within the posterior, not arbitrary noise


def test_two_processes_killed_and_resumed_equal_an_uninterrupted_run(tmp_path, two_process_run):
    """Over gloo, 2 processes: SIGKILL after the first checkpoint, run again; the losses equal a run never killed."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import free_port

    cfgs = {"whole": two_process_run, "killed": smoke_config(tmp_path / "killed", *TWO_PROCESS_STEPS)}
    run_until(cfgs["killed"], "backbone")
    args = _two_process_args
    killed = cfgs["killed"]
    proc = subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                             "--main_process_port", str(free_port()), "-m", "mvc", *args(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while not (killed.paths.checkpoints / "checkpoint-2").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    import psutil

    ranks = psutil.Process(proc.pid).children(recursive=True)  # torch's elastic agent may start them in their own group
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, as a lost machine would end them
    for rank in ranks:
        with contextlib.suppress(psutil.NoSuchProcess):
            rank.kill()
    psutil.wait_procs(ranks, timeout=30)
    proc.wait()
    assert not killed.paths.mvc_model.exists()
    again = launch_two_processes(*args(killed))
    assert again.returncode == 0, again.stderr[-3000:]
    a, b = (pd.read_csv(c.paths.finetune_loss) for c in (cfgs["whole"], killed))
    assert b["step"].tolist() == list(range(6))
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4)
    assert a["loss_per_process"].tolist() == b["loss_per_process"].tolist() or \
        np.allclose(a["loss_per_process"].str.split(" ", expand=True).astype(float),
                    b["loss_per_process"].str.split(" ", expand=True).astype(float), rtol=1e-4)
