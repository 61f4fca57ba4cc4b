"""Caption embeddings from the backbone's own text encoder, their safetensors cache, and MVC mixing.

Every mixing mode is a convex combination of caption embeddings of one class (DESIGN.md):

- `none`: the anchor caption alone;
- `fine`: `(1 - beta) E_a + beta E_b`, `beta ~ U(0, beta_max)`, `b` another caption of the class;
- `coarse`: `sum_j w_j E_j` over `k` captions of the class, `w ~ Dirichlet(alpha)`;
- `coarse+fine`: fine applied to a coarse mix, `(1 - beta) coarse + beta E_b`.

`draw_mix` draws which captions and which weights (a `MixPlan`), `apply_mix` forms the embeddings for a
whole batch at once.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from mvc import state
from mvc.config import StudyConfig
from mvc.io import atomic_path

log = logging.getLogger(__name__)

EMPTY_PROMPT = ""


# ----------------------------------------------------------------------------------------------------------
# Encoding


class TextEncoder:
    """Token-level last hidden state (L x d) of a CLIP text encoder, as Stable Diffusion consumes it."""

    def __init__(self, tokenizer, model: torch.nn.Module, max_length: int = 77, device: str = "cpu",
                 name: str = "clip"):
        self.tokenizer, self.model, self.max_length, self.device = tokenizer, model.to(device).eval(), max_length, device
        self.name = name

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(texts, padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt").input_ids.to(self.device)
        return self.model(ids)[0].float().cpu()


class OpenClipTextEncoder:
    """open_clip's text tower, token level: token embedding, positional embedding, transformer, final norm."""

    def __init__(self, model_name: str, pretrained: str | None, device: str = "cpu"):
        import open_clip

        self.model = open_clip.create_model(model_name, pretrained=pretrained, device=device).eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device, self.name = device, f"open_clip:{model_name}:{pretrained}"

    @torch.inference_mode()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        m = self.model
        ids = self.tokenizer(texts).to(self.device)
        x = m.token_embedding(ids) + m.positional_embedding[: ids.shape[1]]
        x = m.transformer(x, attn_mask=m.attn_mask)
        return m.ln_final(x).float().cpu()


def build_text_encoder(cfg: StudyConfig, device: str = "cpu"):
    """The encoder named by `text.encoder`: the backbone's CLIPTextModel, or an open_clip model."""
    if cfg.text.encoder == "open_clip":
        return OpenClipTextEncoder(cfg.text.open_clip_model, cfg.text.open_clip_pretrained, device)
    from mvc.models import text_components

    tokenizer, model, source = text_components(cfg)
    return TextEncoder(tokenizer, model, cfg.text.max_length, device, name=f"backbone:{source}")


# ----------------------------------------------------------------------------------------------------------
# Cache


def caption_key(encoder_name: str, text: str, max_length: int) -> str:
    return hashlib.sha1(f"{encoder_name}\x00{max_length}\x00{text}".encode()).hexdigest()


class EmbeddingCache:
    """Caption embeddings in safetensors shards under one folder, keyed by a hash of (encoder, caption).

    Each caption is encoded once; a new batch of misses becomes a new shard, written atomically.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._where: dict[str, Path] = {}
        for shard in sorted(self.folder.glob("shard-*.safetensors")):
            with safe_open(shard, "pt") as fh:
                for key in fh.keys():
                    self._where[key] = shard
        self.hits = self.misses = 0

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._where)

    def get(self, keys: list[str]) -> torch.Tensor:
        by_shard: dict[Path, list[str]] = {}
        for k in keys:
            by_shard.setdefault(self._where[k], []).append(k)
        found = {}
        for shard, ks in by_shard.items():
            with safe_open(shard, "pt") as fh:
                found.update({k: fh.get_tensor(k) for k in ks})
        return torch.stack([found[k] for k in keys])

    def put(self, keys: list[str], values: torch.Tensor) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        shard = self.folder / f"shard-{len(list(self.folder.glob('shard-*.safetensors'))):05d}.safetensors"
        tensors = {k: v.contiguous() for k, v in zip(keys, values) if k not in self._where}
        if not tensors:
            return
        with atomic_path(shard) as tmp:
            save_file(tensors, str(tmp))
        self._where.update({k: shard for k in tensors})

    def encode(self, encoder, texts: list[str], max_length: int, batch_size: int = 64,
               show_progress: bool = False) -> torch.Tensor:
        """Embeddings for `texts` (N, L, d): cached ones read, the others encoded (once each) and stored."""
        keys = [caption_key(encoder.name, t, max_length) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._where))
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        text_of = dict(zip(keys, texts))
        for lo in tqdm(range(0, len(missing), batch_size), desc="embed", unit="batch", disable=not show_progress):
            chunk = missing[lo: lo + batch_size]
            self.put(chunk, encoder([text_of[k] for k in chunk]))
        return self.get(keys) if keys else torch.empty(0)


@dataclass
class CaptionEmbeddings:
    """The embedded captions of the labelled training images, in the order of `frame`."""

    frame: pd.DataFrame  # image_id, label, text (train split)
    embeddings: torch.Tensor  # (N, L, d)
    empty: torch.Tensor  # (L, d): the empty prompt, for classifier-free guidance

    @property
    def labels(self) -> np.ndarray:
        return self.frame["label"].to_numpy()

    def row_of(self, image_ids: np.ndarray) -> np.ndarray:
        pos = pd.Series(np.arange(len(self.frame)), index=self.frame["image_id"].to_numpy())
        return np.array(pos.loc[image_ids].to_numpy())


def embed_captions(cfg: StudyConfig, show_progress: bool = True) -> CaptionEmbeddings:
    """Stage `embed`: encode the training captions and the empty prompt into the cache."""
    from mvc.captioning import load_captions
    from mvc.runtime import pick_device

    paths = cfg.paths
    if not state.prepare(cfg, "embed", [paths.embeddings]):
        return load_caption_embeddings(cfg)
    start = time.time()
    captions = load_captions(cfg)
    encoder = build_text_encoder(cfg, pick_device(cfg.device))
    cache = EmbeddingCache(paths.embeddings)
    train = captions[captions["split"] == "train"].sort_values("image_id").reset_index(drop=True)
    cache.encode(encoder, [EMPTY_PROMPT] + train["text"].tolist(), cfg.text.max_length, cfg.text.batch_size,
                 show_progress)
    state.mark_done(cfg, "embed", time.time() - start, {"encoder": encoder.name, "captions": len(train),
                                                         "cache_hits": cache.hits, "cache_misses": cache.misses})
    return load_caption_embeddings(cfg)


def load_caption_embeddings(cfg: StudyConfig) -> CaptionEmbeddings:
    from mvc.captioning import load_captions

    state.require(cfg, "embed", [cfg.paths.embeddings])
    name = state.stage_info(cfg, "embed")["encoder"]
    captions = load_captions(cfg)
    train = captions[captions["split"] == "train"].sort_values("image_id").reset_index(drop=True)
    cache = EmbeddingCache(cfg.paths.embeddings)
    keys = [caption_key(name, t, cfg.text.max_length) for t in [EMPTY_PROMPT] + train["text"].tolist()]
    emb = cache.get(keys)
    return CaptionEmbeddings(train[["image_id", "label", "text"]], emb[1:], emb[0])


# ----------------------------------------------------------------------------------------------------------
# Mixing


@dataclass
class MixPlan:
    """For each of B mixes: which captions (rows of the pool) and their convex weights, both (B, K)."""

    indices: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)


def same_class_draws(labels: np.ndarray, anchors: np.ndarray, count: int, rng: np.random.Generator,
            exclude_anchor: bool) -> np.ndarray:
    """`count` distinct captions of each anchor's class, drawn at random (B, count), vectorised.

    Where a class has fewer captions than asked for, draws repeat (and the anchor is allowed again).
    """
    same = labels[None, :] == labels[anchors][:, None]  # (B, N)
    if exclude_anchor:
        same[np.arange(len(anchors)), anchors] = False
        lonely = ~same.any(axis=1)
        same[lonely, anchors[lonely]] = True  # a class of one caption: the anchor is all there is
    keys = np.where(same, rng.random(same.shape), np.inf)
    order = np.argsort(keys, axis=1)
    n_same = same.sum(axis=1)
    cols = np.arange(count)[None, :] % n_same[:, None]  # wrap around when the class is small
    return np.take_along_axis(order, cols, axis=1)


def draw_mix(labels: np.ndarray, anchors: np.ndarray, mode: str, k: int = 3, alpha: float = 1.0,
             beta_max: float = 0.3, rng: np.random.Generator | None = None,
             include_anchor: bool = False) -> MixPlan:
    """Draw B mixes (one per anchor caption index), never crossing the anchor's class.

    `include_anchor`: coarse mixes always contain the anchor (fine-tuning: the target's own caption).
    """
    rng = rng or np.random.default_rng()
    labels, anchors = np.asarray(labels), np.asarray(anchors, dtype=np.int64)
    b = len(anchors)
    if mode == "none":
        return MixPlan(anchors[:, None], np.ones((b, 1)))
    if mode in ("coarse", "coarse+fine"):
        if include_anchor:
            idx = np.concatenate([anchors[:, None], same_class_draws(labels, anchors, k - 1, rng, True)], axis=1)
        else:
            idx = same_class_draws(labels, anchors, k, rng, False)
        w = rng.dirichlet(np.full(k, alpha), size=b)
        if mode == "coarse":
            return MixPlan(idx, w)
    else:
        idx, w = anchors[:, None], np.ones((b, 1))
    if mode not in ("fine", "coarse+fine"):
        raise ValueError(f"mixing mode {mode!r}: allowed none, fine, coarse, coarse+fine")
    other = same_class_draws(labels, anchors, 1, rng, True)
    beta = rng.uniform(0.0, beta_max, size=(b, 1))
    return MixPlan(np.concatenate([idx, other], axis=1), np.concatenate([(1 - beta) * w, beta], axis=1))


def concat_plans(plans: list[MixPlan]) -> MixPlan:
    return MixPlan(np.concatenate([p.indices for p in plans]), np.concatenate([p.weights for p in plans]))


def apply_mix(embeddings: torch.Tensor, plan: MixPlan) -> torch.Tensor:
    """The mixed embeddings (B, L, d) = sum_k w_bk E[i_bk], for the whole batch at once."""
    idx = torch.as_tensor(np.array(plan.indices), device=embeddings.device)
    w = torch.as_tensor(plan.weights, dtype=embeddings.dtype, device=embeddings.device)
    return torch.einsum("bk,bkld->bld", w, embeddings[idx])


def mix(embeddings: torch.Tensor, labels: np.ndarray, anchors: np.ndarray, mode: str, k: int = 3,
        alpha: float = 1.0, beta_max: float = 0.3, seed: int | None = None,
        include_anchor: bool = False) -> torch.Tensor:
    """Draw and apply B mixes in one call (seeded)."""
    plan = draw_mix(labels, anchors, mode, k, alpha, beta_max, np.random.default_rng(seed), include_anchor)
    return apply_mix(embeddings, plan)
