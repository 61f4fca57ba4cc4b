"""Stage `embed`: encode every training caption (and the empty prompt) once into the safetensors cache."""

from __future__ import annotations

from mvc.artifacts import load_caption_embeddings, load_captions, training_captions
from mvc.config import StudyConfig
from mvc.embedding_cache import EMPTY_PROMPT, EmbeddingCache
from mvc.encoders import build_text_encoder
from mvc.runtime import pick_device
from mvc.state import stage


@stage("embed", reader=load_caption_embeddings)
def embed_captions(cfg: StudyConfig, show_progress: bool = True) -> dict:
    """Encode the training captions with the encoder `text.encoder` names; cached ones are read, not recomputed."""
    train = training_captions(load_captions(cfg))
    encoder = build_text_encoder(cfg, pick_device(cfg.device))
    cache = EmbeddingCache(cfg.paths.embeddings)
    cache.encode(encoder, [EMPTY_PROMPT] + train["text"].tolist(), cfg.text.max_length, cfg.text.batch_size,
                 show_progress)
    return {"encoder": encoder.name, "captions": len(train), "cache_hits": cache.hits, "cache_misses": cache.misses,
            "device": str(encoder.device)}
