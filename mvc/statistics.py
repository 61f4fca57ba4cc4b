"""Statistics of a results table: means with t intervals, the accuracy table, paired differences, ablations."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

METHOD_ORDER = ["none", "autoaugment", "randaugment", "trivialaugment", "mixup", "cutmix", "sd_naive", "mvc",
                "mvc_two_phase", "mvc_randaugment"]
MVC_METHODS = {"mvc", "mvc_two_phase", "mvc_randaugment"}


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its t-based confidence interval (0 for a single value)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), 0.0
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(half)


def accuracy_table(results: pd.DataFrame, variant: str = "main") -> pd.DataFrame:
    """Per method: seeds, top-1 mean and 95% CI (in %), top-5 mean."""
    rows = []
    sub = results[results["variant"] == variant]
    for method in sorted(sub["method"].unique(), key=lambda m: (METHOD_ORDER + [m]).index(m)):
        r = sub[sub["method"] == method]
        m1, h1 = mean_ci(r["top1"] * 100)
        rows.append({"method": method, "seeds": len(r), "top1": round(m1, 2), "ci95": round(h1, 2),
                     "top5": round(float(r["top5"].mean() * 100), 2)})
    return pd.DataFrame(rows)


def paired_difference(results: pd.DataFrame, method: str = "mvc") -> dict:
    """`method` minus the best non-MVC method (by mean top-1), paired over seeds, with a paired t-test."""
    main = results[results["variant"] == "main"]
    others = main[~main["method"].isin(MVC_METHODS)]
    if others.empty or method not in set(main["method"]):
        return {}
    best = others.groupby("method")["top1"].mean().idxmax()
    a = main[main["method"] == method].set_index("seed")["top1"]
    b = main[main["method"] == best].set_index("seed")["top1"]
    seeds = a.index.intersection(b.index)
    diff = (a.loc[seeds] - b.loc[seeds]) * 100
    m, h = mean_ci(diff.to_numpy())
    p = float(stats.ttest_rel(a.loc[seeds], b.loc[seeds]).pvalue) if len(seeds) > 1 and diff.std() > 0 else float("nan")
    return {"method": method, "baseline": best, "seeds": len(seeds), "difference": round(m, 2), "ci95": round(h, 2),
            "p_value": round(p, 4) if p == p else p}


def ablation_table(results: pd.DataFrame) -> pd.DataFrame:
    """MVC under each ablation variant, beside the main MVC and two-phase rows (same seeds)."""
    ab = results[results["variant"] != "main"]
    if ab.empty:
        return pd.DataFrame(columns=["setting", "seeds", "top1", "ci95"])
    seeds = set(ab["seed"])
    main = results[(results["variant"] == "main") & results["method"].isin(["mvc", "mvc_two_phase"]) & results["seed"].isin(seeds)]
    rows = []
    for (variant, method), r in pd.concat([main, ab]).groupby(["variant", "method"], sort=False):
        m, h = mean_ci(r["top1"] * 100)
        label = "two-phase (main)" if method == "mvc_two_phase" else ("one-phase (main)" if variant == "main" else variant)
        rows.append({"setting": label, "seeds": len(r), "top1": round(m, 2), "ci95": round(h, 2)})
    return pd.DataFrame(rows)
