"""DA-Fusion: per-class tokens by textual inversion (`mvc.textual_inversion`) and SDEdit toward them at a t0 drawn per
image (`mvc.samplers.draw_dafusion`), on the smoke study's surrogate (MiniLM's tokenizer) and a tiny Stable Diffusion
(CLIP's tokenizer), through the kit's own stages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import smoke_through_backbone


def test_textual_inversion_learns_one_row_per_class_and_resumes_exactly(tmp_path):
    from mvc.components import load_backbone
    from mvc.finetune import finetune_model
    from mvc.textual_inversion import EMBEDS_FILE, class_token

    cfg = smoke_through_backbone(tmp_path / "a")
    before = load_backbone(cfg.paths.backbone).text_encoder.get_input_embeddings().weight.detach()
    assert finetune_model(cfg, "dafusion", show_progress=False, max_steps=3) is None  # interrupted inside class 0
    work = cfg.paths.model_work("finetune_dafusion")
    assert (work / "checkpoint-class-0.pt").exists() and not cfg.paths.model("dafusion", "finetune_dafusion").exists()
    folder = finetune_model(cfg, "dafusion", show_progress=False)  # resumes class 0 at step 3
    learnt = load_file(str(folder / EMBEDS_FILE))
    assert sorted(learnt) == [class_token(c) for c in (0, 1, 2)] and not list(work.glob("checkpoint-class-*"))

    model = load_backbone(folder)
    weight = model.text_encoder.get_input_embeddings().weight.detach()
    ids = model.tokenizer.convert_tokens_to_ids(sorted(learnt))
    assert torch.equal(weight[: len(before)], before)  # every word of the vocabulary kept exactly
    start = before[model.tokenizer("the", add_special_tokens=False).input_ids[0]]
    for token, i in zip(sorted(learnt), ids):
        assert torch.equal(weight[i], learnt[token]) and not torch.allclose(weight[i], start)  # each token learnt
    assert not torch.allclose(learnt[class_token(0)], learnt[class_token(1)])  # on its own class's images

    again = smoke_through_backbone(tmp_path / "b")  # the same study, never interrupted
    uninterrupted = load_file(str(finetune_model(again, "dafusion", show_progress=False) / EMBEDS_FILE))
    for token in learnt:
        assert torch.allclose(learnt[token], uninterrupted[token], atol=1e-6)  # the resumed run lost nothing


def test_tokens_load_into_a_stable_diffusion_pipeline_with_diffusers(tiny_sd, tmp_path):
    """On Stable Diffusion's own layout (CLIP's tokenizer): the tokens are added and learnt, and the exported vectors
    load into a stock pipeline with `load_textual_inversion` to encode exactly what the saved text encoder does."""
    from diffusers import StableDiffusionImg2ImgPipeline

    from mvc.components import load_backbone
    from mvc.textual_inversion import add_class_tokens, class_prompt, encode_prompts, load_tokens

    bb = load_backbone(tiny_sd)
    with pytest.raises(ValueError, match="textual_inversion.initializer"):
        add_class_tokens(bb.tokenizer, bb.text_encoder, [0, 1], "a photograph of")
    ids = add_class_tokens(bb.tokenizer, bb.text_encoder, [0, 1], "the")
    assert bb.tokenizer.tokenize(class_prompt("a photo of a {name}", 1))[-1].startswith("<mvc-class-1>")
    vectors = {"<mvc-class-0>": torch.randn(bb.text_encoder.config.hidden_size),
               "<mvc-class-1>": torch.randn(bb.text_encoder.config.hidden_size)}
    with torch.no_grad():
        for i, v in zip(ids, vectors.values()):
            bb.text_encoder.get_input_embeddings().weight[i] = v
    from safetensors.torch import save_file

    save_file(vectors, str(tmp_path / "learned_embeds.safetensors"))
    stock = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_sd, safety_checker=None, requires_safety_checker=False)
    assert load_tokens(stock, tmp_path / "learned_embeds.safetensors") == list(vectors)
    prompts = [class_prompt("a photo of a {name}", 0), class_prompt("a photo of a {name}", 1)]
    with torch.no_grad():
        ours = encode_prompts(bb.tokenizer, bb.text_encoder, prompts)
        theirs = stock.encode_prompt(prompts, "cpu", 1, False)[0]
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_dafusion_set_draws_toward_each_class_token_at_a_t0_per_image(smoke_generated, monkeypatch):
    from mvc import samplers
    from mvc.artifacts import load_manifest
    from mvc.components import load_backbone
    from mvc.generate import img2img_pipeline
    from mvc.samplers import SampleBatch, dafusion_strength, draw_dafusion

    cfg = smoke_generated
    g = cfg.generate
    manifest = load_manifest(cfg, "dafusion")
    train = manifest["source_image_id"].nunique()
    assert len(manifest) == train * g.dafusion_images_per_source and (manifest["mode"] == "dafusion").all()
    drawn = [dafusion_strength(s, g.dafusion_strengths) for s in manifest["seed"]]
    assert set(drawn) == set(g.dafusion_strengths)  # every t0 of the set is used, one per image

    calls = []
    monkeypatch.setattr(samplers, "sdedit", lambda pipe, sources, prompts, seeds, strength, steps, guidance:
                        calls.append((strength, prompts, seeds)) or np.full((len(seeds), 16, 16, 3), 7, np.uint8))
    seeds = [int(s) for s in manifest["seed"][:6]]
    pipe = img2img_pipeline(load_backbone(cfg.paths.model("dafusion", "finetune_dafusion")), g.scheduler, "cpu")
    batch = SampleBatch(source_ids=[0] * 6, seeds=seeds, mode="dafusion", unet=None, vae=None, scheduler=pipe.scheduler,
                        steps=g.steps, s_text=7.5, s_image=1.0, latent_shape=(4, 8, 8), empty=None, text=None,
                        condition=None, sources=lambda: np.zeros((6, 16, 16, 3), np.uint8), prompts=["x"] * 6,
                        pipeline=pipe, labels=[0, 1, 2, 0, 1, 2], template=cfg.data.prompt_template,
                        strengths=tuple(g.dafusion_strengths))
    out = draw_dafusion(batch)
    assert out.shape == (6, 16, 16, 3) and (out == 7).all()
    assert sorted(c[0] for c in calls) == sorted(set(dafusion_strength(s, g.dafusion_strengths) for s in seeds))
    for strength, prompts, used in calls:  # each call: the images of one t0, each with its own class's token
        assert all(dafusion_strength(s, g.dafusion_strengths) == strength for s in used)
        assert all(f"<mvc-class-{[0, 1, 2, 0, 1, 2][seeds.index(s)]}>" in p for p, s in zip(prompts, used))


def test_a_t0_that_denoises_nothing_is_refused(tmp_path):
    from mvc.config import ConfigError
    from tests.conftest import smoke_config

    with pytest.raises(ConfigError, match="generate.dafusion_strengths"):
        smoke_config(tmp_path, "generate.dafusion_strengths=[0.25, 1.0]")  # 2 steps x 0.25: no step


def test_the_memory_model_counts_a_textual_inversion_step_where_a_set_needs_tokens():
    from mvc import memory
    from mvc.config import load_config
    from tests.conftest import REPO

    def step(*overrides):
        cfg = load_config(REPO / "params" / "cifar10.yaml", list(overrides))
        return next((p for p in memory.predict(cfg, "cuda", 80) if p.stage == "finetune_dafusion step"), None)

    shipped = step()
    assert shipped is not None and shipped.parts["UNet weights"] == pytest.approx(
        step("textual_inversion.mixed_precision=no").parts["UNet weights"] / 2)  # bf16 weights of the frozen UNet
    big = step("textual_inversion.batch_size=512")  # a step's activations above a class's encoding
    assert big.gib > shipped.gib and big.lower == "textual_inversion.batch_size"
    assert step("generate.sets=[sd_naive]", "classify.methods=[none, mvc]") is None  # no set needs tokens
