"""MVC mixing of caption embeddings (docs/method.md, section 2). Every mode is a convex combination of caption
embeddings of one class:

- `none`: the anchor caption alone, `e_T = E_a`;
- `fine`: `e_T = (1 - beta) E_a + beta E_b`, `beta ~ U(0, beta_max)`, `b` another caption of the class;
- `coarse`: `e_T = sum_j w_j E_j` over `k` captions of the class, `w ~ Dirichlet(alpha)`;
- `coarse+fine`: fine applied to a coarse mix, `(1 - beta) coarse + beta E_b`.

`draw_mix` draws which captions and which weights (a `MixPlan`); `apply_mix` forms the embeddings of a whole
batch at once. Pure functions over arrays and tensors with an explicit random generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch


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
    """One plan holding the mixes of several, in order."""
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


def seeded_mixes(embeddings: torch.Tensor, labels: np.ndarray, rows: np.ndarray, seeds: list[int], mode: str,
                 k: int = 3, alpha: float = 1.0, beta_max: float = 0.3, include_anchor: bool = False) -> torch.Tensor:
    """One mix per (anchor row, seed), each drawn from its own seed so that batching changes nothing."""
    plans = [draw_mix(labels, rows[i: i + 1], mode, k, alpha, beta_max, np.random.default_rng(s), include_anchor)
             for i, s in enumerate(seeds)]
    return apply_mix(embeddings, concat_plans(plans))


def plan_table(plan: MixPlan, texts: list[str], row: int = 0) -> pd.DataFrame:
    """One mix of a plan as a table: the captions it combines and their weights (notebook 02)."""
    idx, w = np.asarray(plan.indices[row]), np.asarray(plan.weights[row])
    return pd.DataFrame({"caption": [texts[i] for i in idx], "weight": np.round(w, 3)})
