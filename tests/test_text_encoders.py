"""The surrogate's text encoders: the pretrained MiniLM (the real packaged weights), the random BERT of the tests and
the random CLIP of the ablation; what the cache holds equals what a stock diffusers pipeline encodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvc.config import SurrogateConfig
from mvc.encoders import TextEncoder
from mvc.mixing import mix
from mvc.surrogate import build_surrogate_text_parts, build_surrogate_unet, minilm_folder

CAPTIONS = [f"a photo of the digit three, {d}" for d in ("thin strokes", "thick strokes slanted left",
                                                          "small and high", "bright large")]


@pytest.fixture(scope="module")
def minilm():
    tokenizer, model = build_surrogate_text_parts(SurrogateConfig(text_encoder="minilm"), 32)
    return TextEncoder(tokenizer, model, 32, name="minilm")


def _sentence(encoder: TextEncoder, text: str) -> torch.Tensor:
    """Mean of the token states over the caption's own tokens (sentence-transformers' pooling)."""
    n = len(encoder.tokenizer(text).input_ids)
    return encoder([text])[0, :n].mean(0)


def test_packaged_minilm_loads_offline_and_is_semantic(minilm):
    assert (minilm_folder() / "model.safetensors").exists()
    assert minilm.model.config.hidden_size == 384 and minilm.model.config.num_hidden_layers == 6
    assert minilm.model.config.use_attention_mask  # what makes diffusers' pipelines pass the padding mask
    assert not any(p.requires_grad for p in minilm.model.parameters())  # frozen, as SD's CLIP encoder is
    a, b, c = (_sentence(minilm, t) for t in ("a photo of a cat", "a picture of a kitten", "a photo of a car"))
    cos = torch.nn.functional.cosine_similarity
    # a semantic space: a paraphrase with other words is nearer than a caption that shares all but one word (a random
    # encoder, which sees tokens, orders them the other way)
    assert cos(a, b, dim=0) > cos(a, c, dim=0) + 0.1


def test_padding_does_not_change_a_bidirectional_encoders_tokens(minilm):
    short = TextEncoder(minilm.tokenizer, minilm.model, 16)
    n = len(minilm.tokenizer(CAPTIONS[0]).input_ids)
    torch.testing.assert_close(minilm([CAPTIONS[0]])[0, :n], short([CAPTIONS[0]])[0, :n], atol=1e-5, rtol=1e-4)


def test_class_words_move_under_mixing_with_a_bidirectional_encoder(minilm):
    """MiniLM's class words see the attributes (unlike CLIP's causal prefix): mixing moves them, though less than it
    moves the attribute tokens (docs/method.md gives the measured sizes)."""
    emb = minilm(CAPTIONS)
    labels, anchors = np.zeros(len(CAPTIONS), int), np.arange(len(CAPTIONS)).repeat(5)
    mixed = mix(emb, labels, anchors, "coarse", seed=0)
    prefix = len(minilm.tokenizer("a photo of the digit three").input_ids) - 1  # [CLS] and the class prompt
    moved = (mixed - emb[anchors]).norm(dim=-1).mean(0)  # per token position
    assert moved[1:prefix].min() > 0  # the class words move
    assert moved[1:prefix].mean() < moved[prefix + 1: prefix + 3].mean()  # less than the attribute words


@pytest.mark.parametrize("kind, width", [("random_bert", 16), ("random_clip", 16)])
def test_random_encoders_are_deterministic_and_size_the_unet(kind, width):
    s = SurrogateConfig(text_encoder=kind, text_hidden_size=width, text_layers=1, text_heads=2, unet_channels=[8, 16])
    (tok, a), (_, b) = build_surrogate_text_parts(s, 32), build_surrogate_text_parts(s, 32)
    ea, eb = TextEncoder(tok, a, 32)(CAPTIONS[:2]), TextEncoder(tok, b, 32)(CAPTIONS[:2])
    assert ea.shape == (2, 32, width)
    torch.testing.assert_close(ea, eb)
    unet = build_surrogate_unet(s, 8, a.config.hidden_size)
    with torch.no_grad():
        out = unet(torch.randn(2, 4, 8, 8), torch.tensor([1, 500]), encoder_hidden_states=ea).sample
    assert out.shape == (2, 4, 8, 8)


def test_cached_embeddings_equal_what_a_stock_pipeline_encodes(tmp_path, minilm):
    """A surrogate folder with MiniLM loads in diffusers' StableDiffusionPipeline, which encodes a prompt exactly as
    the kit's cache does (the attention mask included): mixing the cached embeddings is mixing the pipeline's."""
    from diffusers import StableDiffusionPipeline

    from mvc.surrogate import build_surrogate_vae, noise_scheduler

    s = SurrogateConfig(vae_channels=[8, 16], unet_channels=[8, 16])
    pipe = StableDiffusionPipeline(vae=build_surrogate_vae(s, 16), text_encoder=minilm.model,
                                   tokenizer=minilm.tokenizer, unet=build_surrogate_unet(s, 8, 384),
                                   scheduler=noise_scheduler(s), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(tmp_path / "sd")
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path / "sd")
    assert type(loaded.text_encoder).__name__ == "BertModel" and loaded.tokenizer.model_max_length == 32
    ours = minilm(CAPTIONS[:2])
    theirs, _ = loaded.encode_prompt(CAPTIONS[:2], "cpu", 1, False)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("pooler", [True, False])
def test_a_saved_bert_loads_with_exactly_the_pooler_it_holds_and_no_load_report(tmp_path, capfd, pooler):
    """MiniLM is saved with its pooler, the random encoders without: either loads with no load report (which
    transformers prints for unexpected or missing weights) in the logs and executed notebooks."""
    from transformers import AutoModel, BertConfig, BertModel

    from mvc.components import _saved_pooler

    config = BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16)
    BertModel(config, add_pooling_layer=pooler).save_pretrained(tmp_path)
    assert _saved_pooler(tmp_path) is pooler
    capfd.readouterr()
    loaded = AutoModel.from_pretrained(tmp_path, add_pooling_layer=_saved_pooler(tmp_path))
    assert (loaded.pooler is not None) is pooler
    out = capfd.readouterr()
    assert "LOAD REPORT" not in out.out + out.err
