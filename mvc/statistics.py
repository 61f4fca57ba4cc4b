"""Statistics of a results table: means with t intervals, the accuracy table, paired differences, ablations."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from mvc.registry import METHODS, mvc_methods, report_order, role_of
from mvc.units import parse_shots


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its t-based confidence interval (0 for a single value)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), 0.0
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(half)


def detectable_difference(units: np.ndarray, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest true mean difference a two-sided paired t-test over `units` detects with probability `power`
    at level `alpha` (uncorrected), given their spread: what a "no difference" cannot rule out. NaN below 2 units
    or without spread."""
    from statsmodels.stats.power import TTestPower  # deferred: only the paired tests need it

    units = np.asarray(units, dtype=float)
    sd = units.std(ddof=1) if len(units) > 1 else 0.0
    if len(units) < 2 or sd == 0:
        return float("nan")
    d = TTestPower().solve_power(effect_size=None, nobs=len(units), alpha=alpha, power=power,
                                 alternative="two-sided")
    return float(d * sd)


def units_to_detect(units: np.ndarray, target: float, power: float = 0.8, alpha: float = 0.05) -> float:
    """How many units (replicates, or seeds with one replicate) a two-sided paired t-test needs to detect a true
    difference of `target` with probability `power`, at the spread of `units`: what a design that cannot detect
    `target` would have to grow to. NaN below 2 units or without spread."""
    from statsmodels.stats.power import TTestPower

    units = np.asarray(units, dtype=float)
    sd = units.std(ddof=1) if len(units) > 1 else 0.0
    if len(units) < 2 or sd == 0:
        return float("nan")
    n = TTestPower().solve_power(effect_size=target / sd, nobs=None, alpha=alpha, power=power,
                                 alternative="two-sided")
    return float(np.ceil(max(n, 2)))


def replicate_means(values: pd.Series, replicates: pd.Series | None) -> np.ndarray:
    """The mean of `values` within each replicate (one value per replicate); the values themselves when there is
    one replicate (or no replicate column): the units an interval is taken over."""
    if replicates is None or replicates.nunique() < 2:
        return np.asarray(values, dtype=float)
    return values.groupby(replicates.to_numpy()).mean().to_numpy(dtype=float)


def interval(r: pd.DataFrame, column: str = "top1") -> tuple[float, float]:
    """The mean and the 95% t-interval's half-width of the same units: classifier seeds, or, with several
    replicates of the generative pipeline, the per-replicate means (both sources of variance); the estimate is
    then the mean of the replicate means, the quantity the interval is about."""
    values = r[column] * 100
    units = replicate_means(values, r["replicate"] if "replicate" in r else None)
    return mean_ci(units)


def shots_of(results: pd.DataFrame) -> pd.Series:
    """The results' shots levels as integers (None: all images), however the column was read."""
    return results["shots"].map(parse_shots)


def at_shots(results: pd.DataFrame, shots: int | None) -> pd.DataFrame:
    """The runs of one shots level (all runs when the results have no such column or `shots` is None)."""
    if shots is None or "shots" not in results:
        return results
    return results[shots_of(results) == shots]


def accuracy_table(results: pd.DataFrame, variant: str = "main", shots=None) -> pd.DataFrame:
    """Per method: seeds, replicates, top-1 mean and 95% interval (in %), top-5 mean, synthetic images per source
    image; at one shots level when `shots` is given."""
    rows = []
    sub = at_shots(results[results["variant"] == variant], shots)
    for method in report_order(sub["method"].unique()):
        r = sub[sub["method"] == method]
        m1, h1 = interval(r)
        rows.append({"method": method, "seeds": len(r),
                     "replicates": int(r["replicate"].nunique()) if "replicate" in r else 1,
                     "top1": round(m1, 2), "ci95": round(h1, 2), "top5": round(float(r["top5"].mean() * 100), 2),
                     "synthetic_per_source": int(r["synthetic_per_source"].max())
                     if "synthetic_per_source" in r else 0})
    return pd.DataFrame(rows)


def shots_table(results: pd.DataFrame) -> pd.DataFrame:
    """Top-1 mean and 95% interval per shots level and method (the few-shot curve's numbers)."""
    main = results[results["variant"] == "main"]
    levels = sorted(set(shots_of(main)), key=lambda v: (v is None, v or 0))
    frames = [accuracy_table(main, shots=level).assign(shots=level) for level in levels]
    if not frames:
        return pd.DataFrame(columns=["shots", "method", "seeds", "replicates", "top1", "ci95"])
    return pd.concat(frames)[["shots", "method", "seeds", "replicates", "top1", "ci95"]].reset_index(drop=True)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of p-values for testing several hypotheses at once (a NaN, no test, stays NaN
    and does not count as a hypothesis)."""
    tested = [i for i, p in enumerate(p_values) if not np.isnan(p)]
    order = sorted(tested, key=lambda i: p_values[i])
    m, adjusted, running = len(tested), [float("nan")] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def paired_units(main: pd.DataFrame, method: str, baseline: str) -> tuple[pd.Index, np.ndarray, pd.Series | None]:
    """The seeds `method` and `baseline` share, the paired differences (top-1 points) averaged within each
    replicate (the units of a test), and `method`'s replicate column (None without one)."""
    mine = main[main["method"] == method].set_index("seed")
    replicate = mine["replicate"] if "replicate" in mine else None
    b = main[main["method"] == baseline].set_index("seed")["top1"]
    seeds = mine.index.intersection(b.index)
    diff = (mine["top1"].loc[seeds] - b.loc[seeds]) * 100
    return seeds, replicate_means(diff, None if replicate is None else replicate.loc[seeds]), replicate


def paired_difference(main: pd.DataFrame, method: str, baseline: str, target: float | None = None) -> dict:
    """`method` minus `baseline` (top-1 points) over their shared seeds: mean, 95% interval, t-test p-value and mde80
    (and, given a `target` in points, `units_for_target`: the units that would detect it, `units_to_detect`).
    With several replicates of the generative pipeline the paired differences are averaged within each replicate
    and the test and interval are over those replicate means (a replicate's seeds are not independent draws of the
    pipeline)."""
    seeds, units, replicate = paired_units(main, method, baseline)
    m, h = mean_ci(units)
    note = ""
    if len(units) < 2:
        p, note = float("nan"), "one unit: no test"
    elif np.allclose(units, units[0], rtol=0, atol=1e-9):  # no variance: no t-test (p = 1 would read "no difference")
        p, note = float("nan"), f"every paired difference is {units[0]:+.2f}: no variance to test"
    else:
        p = float(stats.ttest_1samp(units, 0.0).pvalue)
    return {"method": method, "baseline": baseline, "seeds": len(seeds),
            "replicates": len(units) if replicate is not None and replicate.nunique() > 1 else 1,
            "difference": round(m, 2), "ci95": round(h, 2), "p_value": p,
            "mde80": round(detectable_difference(units), 2), "note": note,
            **({} if target is None else {"target": target, "units_for_target": units_to_detect(units, target)})}


def primary_contrast(results: pd.DataFrame, comparator: str, shots: int | None, target: float,
                     method: str | None = None) -> pd.DataFrame:
    """The contrast declared before the run (`report.comparator`, `report.primary_shots`): the method under test
    minus `comparator` at `shots`, one paired test (`paired_difference`), not corrected (it is the one test fixed in
    advance), with the units that would detect `target` points 80% of the time at the spread seen; empty when
    either method did not run there."""
    method = method or role_of("under_test")
    main = at_shots(results[results["variant"] == "main"], shots)
    if not {method, comparator} <= set(main["method"]):
        return pd.DataFrame()
    row = paired_difference(main, method, comparator, target)
    row["p_value"] = round(row["p_value"], 4)
    return pd.DataFrame([{"shots": "all" if shots is None else shots, **row}])


def _holm_columns(table: pd.DataFrame) -> pd.DataFrame:
    if len(table):
        table["p_holm"] = [round(v, 4) for v in holm(table["p_value"].tolist())]
        table["p_value"] = table["p_value"].round(4)
    return table


def paired_tests(results: pd.DataFrame, method: str | None = None, comparator: str | None = None,
                 shots=None) -> pd.DataFrame:
    """`method` (default: the method under test) minus each baseline (every method but the MVC ones and the
    oracles, which are controls: `oracle_tests`), paired over seeds (`paired_difference`), with a t-test and Holm's
    correction over the family; the comparator fixed in advance (`report.comparator`, default: the
    `tuned_classical` role) is marked. `mde80`: the difference the test would detect 80% of the time
    (`detectable_difference`), beside every p-value, so that a "no difference" says how large a difference it
    cannot rule out."""
    method = method or role_of("under_test")
    comparator = comparator or role_of("tuned_classical")
    main = at_shots(results[results["variant"] == "main"], shots)
    if method not in set(main["method"]):
        return pd.DataFrame()
    controls = mvc_methods() | {m for m, spec in METHODS.items() if spec.family == "oracle"}
    rows = []
    for baseline in [m for m in report_order(main["method"].unique()) if m not in controls]:
        row = paired_difference(main, method, baseline)
        rows.append({**row, "comparator": baseline == comparator})
    columns = ["method", "baseline", "comparator", "seeds", "replicates", "difference", "ci95", "p_value", "mde80",
               "note"]
    return _holm_columns(pd.DataFrame(rows, columns=columns if rows else None))


# the oracle contrasts: (minuend, subtrahend, what it measures); `under_test` stands for the method under test
ORACLE_CONTRASTS = (
    ("oracle_real", "reference", "headroom: a perfect generator over no augmentation"),
    ("oracle_generator_res", "oracle_real", "the generator's bottleneck (its resolution and VAE)"),
    ("oracle_noisy", "oracle_generator_res", "MVC's label fidelity, given to the bottlenecked oracle"),
    ("under_test", "oracle_noisy", "what MVC adds beyond its fidelity (mixing, novelty), or lacks"),
    ("under_test", "reference", "MVC over no augmentation"),
)


def oracle_tests(results: pd.DataFrame, shots=None) -> pd.DataFrame:
    """The steps from no augmentation to a perfect generator and down to MVC (`ORACLE_CONTRASTS`), each a paired
    difference (`paired_difference`), Holm-corrected as one family; only the contrasts whose two methods ran."""
    main = at_shots(results[results["variant"] == "main"], shots)
    ran = set(main["method"])
    name = {"under_test": role_of("under_test"), "reference": role_of("reference")}
    rows = []
    for a, b, what in ORACLE_CONTRASTS:
        a, b = name.get(a, a), name.get(b, b)
        if {a, b} <= ran:
            rows.append({**paired_difference(main, a, b), "measures": what})
    return _holm_columns(pd.DataFrame(rows))


def ablation_table(results: pd.DataFrame) -> pd.DataFrame:
    """MVC under each ablation variant, beside the main MVC and two-phase rows (same seeds)."""
    ab = results[results["variant"] != "main"]
    if ab.empty:
        return pd.DataFrame(columns=["setting", "seeds", "top1", "ci95"])
    seeds = set(ab["seed"])
    paired = [m for m, spec in METHODS.items() if spec.paired]  # the method under test and its two-phase variant
    main = results[(results["variant"] == "main") & results["method"].isin(paired) & results["seed"].isin(seeds)]
    if "shots" in ab:  # the ablations run at one level (the largest)
        main = at_shots(main, parse_shots(ab["shots"].iloc[0]))
    rows = []
    for (variant, method), r in pd.concat([main, ab]).groupby(["variant", "method"], sort=False):
        m, h = interval(r)
        label = ("two-phase (main)" if variant == "main" and METHODS[method].two_phase
                 else "one-phase (main)" if variant == "main" else variant)
        rows.append({"setting": label, "seeds": len(r), "top1": round(m, 2), "ci95": round(h, 2)})
    return pd.DataFrame(rows)
