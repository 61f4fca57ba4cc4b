"""Statistics of a results table: means with t intervals, the accuracy table, paired differences, ablations."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

METHOD_ORDER = ["none", "autoaugment", "randaugment", "trivialaugment", "mixup", "cutmix", "real_two_phase", "sd_naive",
                "sd_img2img", "mvc_nomix", "mvc", "mvc_two_phase", "mvc_randaugment"]
MVC_METHODS = {"mvc", "mvc_two_phase", "mvc_randaugment", "mvc_nomix"}


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its t-based confidence interval (0 for a single value)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), 0.0
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(half)


def accuracy_table(results: pd.DataFrame, variant: str = "main") -> pd.DataFrame:
    """Per method: seeds, top-1 mean and 95% CI (in %), top-5 mean, synthetic images per source image."""
    rows = []
    sub = results[results["variant"] == variant]
    for method in sorted(sub["method"].unique(), key=lambda m: (METHOD_ORDER + [m]).index(m)):
        r = sub[sub["method"] == method]
        m1, h1 = mean_ci(r["top1"] * 100)
        rows.append({"method": method, "seeds": len(r), "top1": round(m1, 2), "ci95": round(h1, 2),
                     "top5": round(float(r["top5"].mean() * 100), 2),
                     "synthetic_per_source": int(r["synthetic_per_source"].max()) if "synthetic_per_source" in r else 0})
    return pd.DataFrame(rows)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of p-values for testing several hypotheses at once."""
    order = np.argsort(p_values)
    m, adjusted, running = len(p_values), [float("nan")] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def paired_tests(results: pd.DataFrame, method: str = "mvc", comparator: str = "randaugment") -> pd.DataFrame:
    """`method` minus each other non-MVC method, paired over seeds, with a paired t-test and Holm's correction
    over the family; the comparator fixed in advance (`report.comparator`) is marked."""
    main = results[results["variant"] == "main"]
    if method not in set(main["method"]):
        return pd.DataFrame()
    a = main[main["method"] == method].set_index("seed")["top1"]
    rows = []
    for baseline in [m for m in METHOD_ORDER + sorted(set(main["method"]) - set(METHOD_ORDER))
                     if m in set(main["method"]) and m not in MVC_METHODS]:
        b = main[main["method"] == baseline].set_index("seed")["top1"]
        seeds = a.index.intersection(b.index)
        diff = (a.loc[seeds] - b.loc[seeds]).to_numpy() * 100
        m, h = mean_ci(diff)
        p = float(stats.ttest_rel(a.loc[seeds], b.loc[seeds]).pvalue) if len(seeds) > 1 and diff.std() > 0 else 1.0
        rows.append({"method": method, "baseline": baseline, "comparator": baseline == comparator,
                     "seeds": len(seeds), "difference": round(m, 2), "ci95": round(h, 2), "p_value": p})
    table = pd.DataFrame(rows)
    if len(table):
        table["p_holm"] = [round(v, 4) for v in holm(table["p_value"].tolist())]
        table["p_value"] = table["p_value"].round(4)
    return table


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
