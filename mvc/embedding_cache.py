"""The caption-embedding cache: safetensors shards keyed by a hash of (encoder, caption, context length)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mvc.io import atomic_path
from mvc.progress import progress

EMPTY_PROMPT = ""  # the unconditional prompt of classifier-free guidance


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
        for lo in progress(range(0, len(missing), batch_size), desc="embed", unit="batch", disable=not show_progress):
            chunk = missing[lo: lo + batch_size]
            self.put(chunk, encoder([text_of[k] for k in chunk]))
        return self.get(keys) if keys else torch.empty(0)
