from __future__ import annotations

import numpy as np
import pytest
import torch

from mvc.embedding_cache import EmbeddingCache
from mvc.encoders import TextEncoder
from mvc.mixing import apply_mix, draw_mix, mix
from mvc.surrogate import build_surrogate_text_encoder, clip_tokenizer
from tests.conftest import REPO


@pytest.fixture(scope="module")
def encoder():
    from mvc.config import load_config

    s = load_config(REPO / "params/smoke.yaml").backbone.surrogate
    return TextEncoder(clip_tokenizer(77), build_surrogate_text_encoder(s), 77, name="test")


@pytest.fixture(scope="module")
def pool(encoder):
    """Two classes of captions sharing a class prefix each, embedded by a causal CLIP text encoder."""
    texts = [f"a photo of the digit {name}, {detail}" for name in ("three", "seven")
             for detail in ("thin strokes", "thick strokes slanted left", "small and high", "bright large",
                            "dark narrow", "wide low contrast")]
    labels = np.repeat([0, 1], 6)
    return encoder(texts), labels, texts


def test_tokenizer_gives_clip_ids():
    ids = clip_tokenizer(77)("a photo of a cat").input_ids
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]  # CLIP's BPE ids


def test_cache_hit_and_miss(tmp_path, encoder):
    cache = EmbeddingCache(tmp_path / "emb")
    calls = []

    def counting(texts):
        calls.append(list(texts))
        return encoder(texts)

    counting.name = encoder.name
    first = cache.encode(counting, ["a cat", "a dog"], 77)
    assert cache.misses == 2 and cache.hits == 0
    again = EmbeddingCache(tmp_path / "emb")  # a new process: reads the shard from disk
    second = again.encode(counting, ["a dog", "a cat", "a bird"], 77)
    assert again.hits == 2 and again.misses == 1
    assert calls == [["a cat", "a dog"], ["a bird"]]  # each caption encoded once
    torch.testing.assert_close(second[0], first[1])
    torch.testing.assert_close(second[1], first[0])


@pytest.mark.parametrize("mode", ["none", "fine", "coarse", "coarse+fine"])
def test_mixes_are_convex_seeded_and_stay_in_class(pool, mode):
    emb, labels, _ = pool
    anchors = np.arange(len(labels)).repeat(5)
    plan = draw_mix(labels, anchors, mode, k=3, alpha=1.0, beta_max=0.3, rng=np.random.default_rng(0))
    np.testing.assert_allclose(plan.weights.sum(axis=1), 1.0)
    assert (plan.weights >= 0).all()
    assert (labels[plan.indices] == labels[anchors][:, None]).all()  # never another class
    a = mix(emb, labels, anchors, mode, seed=3)
    b = mix(emb, labels, anchors, mode, seed=3)
    c = mix(emb, labels, anchors, mode, seed=4)
    torch.testing.assert_close(a, b)
    if mode != "none":
        assert not torch.allclose(a, c)


def test_none_returns_the_anchor_exactly(pool):
    emb, labels, _ = pool
    anchors = np.array([0, 5, 7, 11])
    assert torch.equal(mix(emb, labels, anchors, "none", seed=0), emb[anchors])


def test_fine_lands_closer_to_the_anchor_than_coarse(pool):
    emb, labels, _ = pool
    anchors = np.arange(len(labels)).repeat(20)

    def dist(mode):
        return (mix(emb, labels, anchors, mode, seed=1) - emb[anchors]).flatten(1).norm(dim=1).mean().item()

    assert dist("fine") < dist("coarse")


def test_class_prefix_tokens_unchanged_with_a_causal_encoder(pool):
    emb, labels, texts = pool
    prefix = len(clip_tokenizer(77)("a photo of the digit three").input_ids) - 1  # without the end token
    anchors = np.arange(len(labels)).repeat(3)
    for mode in ("fine", "coarse", "coarse+fine"):
        mixed = mix(emb, labels, anchors, mode, seed=2)
        torch.testing.assert_close(mixed[:, :prefix], emb[anchors][:, :prefix])
        assert not torch.allclose(mixed[:, prefix + 2], emb[anchors][:, prefix + 2])


def test_coarse_with_anchor_always_contains_it(pool):
    _, labels, _ = pool
    anchors = np.arange(len(labels))
    plan = draw_mix(labels, anchors, "coarse+fine", 3, 1.0, 0.3, np.random.default_rng(0), include_anchor=True)
    assert (plan.indices[:, 0] == anchors).all()
    assert apply_mix(torch.eye(12)[:, None, :].expand(-1, 2, -1), plan).shape == (12, 2, 12)
