from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mvc import report, statistics
from mvc.config import load_config
from tests.conftest import REPO


@pytest.fixture
def results():
    rows = []
    accs = {"none": [0.80, 0.82, 0.84], "randaugment": [0.85, 0.86, 0.87], "mvc": [0.88, 0.90, 0.89],
            "mvc_two_phase": [0.90, 0.91, 0.92]}
    for method, values in accs.items():
        for seed, v in enumerate(values):
            rows.append({"dataset": "digits", "method": method, "seed": seed, "shots": 10, "backbone": "small_cnn",
                         "variant": "main", "top1": v, "top5": 1.0, "steps": 10, "synthetic_share": 0,
                         "params_hash": "h"})
    rows.append({**rows[-1], "variant": "M=1", "method": "mvc", "top1": 0.5})
    return pd.DataFrame(rows)


def test_accuracy_table_means_and_intervals(results):
    table = statistics.accuracy_table(results).set_index("method")
    assert list(table.index) == ["none", "randaugment", "mvc", "mvc_two_phase"]  # paper order
    assert table.loc["none", "top1"] == pytest.approx(82.0)
    half = stats.t.ppf(0.975, 2) * np.std([80, 82, 84], ddof=1) / np.sqrt(3)
    assert table.loc["none", "ci95"] == pytest.approx(half, abs=0.01)
    assert table.loc["mvc", "seeds"] == 3  # ablation rows are not in the main table


def test_paired_tests_against_every_baseline_with_holm(results):
    t = statistics.paired_tests(results, "mvc", comparator="randaugment").set_index("baseline")
    assert list(t.index) == ["none", "randaugment"] and t["comparator"].tolist() == [False, True]
    assert t.loc["randaugment", "difference"] == pytest.approx(3.0)
    p = stats.ttest_rel([0.88, 0.90, 0.89], [0.85, 0.86, 0.87]).pvalue
    assert t.loc["randaugment", "p_value"] == pytest.approx(p, abs=1e-4)
    assert (t["p_holm"] >= t["p_value"] - 1e-9).all()


def test_the_detectable_difference_is_found_80_percent_of_the_time():
    rng = np.random.default_rng(0)
    units = rng.normal(0.0, 1.5, 5)
    mde = statistics.detectable_difference(units)
    assert mde > 0 and np.isnan(statistics.detectable_difference(units[:1]))
    draws = rng.normal(mde, units.std(ddof=1), (4000, 5))  # a true difference of mde, at the observed spread
    found = (stats.ttest_1samp(draws, 0.0, axis=1).pvalue < 0.05).mean()
    assert found == pytest.approx(0.8, abs=0.03)
    half = statistics.detectable_difference(units) / 2
    assert (stats.ttest_1samp(rng.normal(half, units.std(ddof=1), (4000, 5)), 0.0, axis=1).pvalue < 0.05).mean() < 0.5


def test_holm_adjustment():
    # three p-values: the smallest times 3, the next times 2 (kept monotone), the largest as it is
    assert statistics.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert statistics.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_holm_leaves_untested_rows_out_of_the_family():
    assert statistics.holm([0.01, float("nan"), 0.03]) == pytest.approx([0.02, float("nan"), 0.03], nan_ok=True)


def _replicated(values: dict[str, list[float]], replicate: list[int]) -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "seed": s, "replicate": replicate[s], "shots": 10, "variant": "main",
                          "top1": v, "top5": 1.0} for m, vs in values.items() for s, v in enumerate(vs)])


def test_the_estimate_is_the_mean_of_the_replicate_means_the_interval_is_about():
    # replicate 0 has two runs, replicate 1 one: the mean of runs (0.8) is not the tested quantity (0.75)
    res = _replicated({"mvc": [0.9, 0.9, 0.6], "none": [0.5, 0.5, 0.5]}, [0, 0, 1])
    table = statistics.accuracy_table(res).set_index("method")
    assert table.loc["mvc", "top1"] == pytest.approx(75.0)
    half = stats.t.ppf(0.975, 1) * np.std([90, 60], ddof=1) / np.sqrt(2)
    assert table.loc["mvc", "ci95"] == pytest.approx(half, abs=0.01)
    tests = statistics.paired_tests(res, "mvc", "none").set_index("baseline")
    assert tests.loc["none", "difference"] == pytest.approx(25.0)  # mean of the replicates' 40 and 10


def test_equal_paired_differences_say_so_instead_of_p_1():
    res = _replicated({"mvc": [0.9, 0.8, 0.7], "none": [0.8, 0.7, 0.6], "randaugment": [0.85, 0.8, 0.66]},
                      [0, 1, 2])
    tests = statistics.paired_tests(res, "mvc", "none").set_index("baseline")
    assert np.isnan(tests.loc["none", "p_value"]) and "every paired difference is +10.00" in tests.loc["none", "note"]
    assert np.isnan(tests.loc["none", "p_holm"]) and tests.loc["randaugment", "p_holm"] <= 1


def test_seed_counts_the_replicates_do_not_divide_are_refused():
    from mvc.config import ConfigError, load_config
    from tests.conftest import REPO

    with pytest.raises(ConfigError, match="classify.seeds has 3 seeds.*replicates: 2"):
        load_config(REPO / "params/smoke.yaml", ["replicates=2", "classify.seeds=[0, 1, 2]"])
    assert load_config(REPO / "params/smoke.yaml", ["replicates=2", "classify.seeds=[0, 1, 2, 3]"]).replicates == 2


def test_tables_are_written_as_csv_markdown_and_booktabs(results, tmp_path):
    out = report.write_table(statistics.accuracy_table(results), tmp_path, "classification", "a caption")
    assert pd.read_csv(out["csv"]).shape == (4, 7)  # method, seeds, replicates, top1, ci95, top5, per source
    assert "| method" in out["md"].read_text()
    tex = out["tex"].read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex
    assert "mvc\\_two\\_phase" in tex or "mvc_two_phase" in tex


def test_a_missing_stage_output_names_the_stage_to_run(smoke):
    from mvc.state import MissingStageOutput

    with pytest.raises(MissingStageOutput) as err:
        report.build_report(smoke)
    message = str(err.value)
    assert "'classify'" in message and "first stage to run is 'data'" in message and "01" in message


def test_report_all_collects_every_study(tmp_path, results):
    import json

    from mvc import cli

    for study in ("digits", "cifar10"):
        report.write_table(statistics.accuracy_table(results), tmp_path / study / "tables", "classification")
    report.write_table(statistics.accuracy_table(results[results["method"] != "mvc"]), tmp_path / "curve" / "tables",
                       "classification")
    report.write_table(statistics.shots_table(results), tmp_path / "curve" / "tables", "few_shot")
    (tmp_path / "curve" / "provenance.json").write_text(json.dumps({"params": {"data": {"shots": [2, 10]}}}))
    text = report.report_all(tmp_path)
    assert "digits (? shots)" in text and "cifar10" in text and "82.00 ±" in text
    assert "curve (10 shots)" in text  # the level each column is at
    wide = pd.read_csv(tmp_path / "_all" / "tables" / "classification_all_studies.csv").set_index("method")
    assert wide.loc["mvc", "curve (10 shots)"] == "not run"  # not nan
    assert (tmp_path / "_all" / "tables" / "few_shot_all_studies.csv").exists()  # the curve is kept
    # `mvc report --all --set reports_root=...` reads the given root, not the repository's
    assert cli.main(["report", "--all", f"--set=reports_root={tmp_path}"]) == 0
    assert cli.reports_root(None, [f"reports_root={tmp_path}"]) == tmp_path


def test_a_unit_keeps_its_shots_an_integer_until_written():
    from mvc.units import Unit, parse_shots

    assert Unit(10, 2).name == "shots-10_rep-2" and Unit(None).label == "all" and Unit(5, 1).seed(7) == 8
    assert [parse_shots(v) for v in ("10", 10, "all")] == [10, 10, None]
    res = pd.DataFrame({"method": ["mvc"] * 4, "seed": [0, 1, 0, 1], "shots": ["2", "2", "10", "10"],
                        "variant": "main", "top1": [0.5, 0.6, 0.9, 0.8], "top5": 1.0})
    table = statistics.shots_table(res)
    assert table["shots"].tolist() == [2, 10]  # integers, in numeric order ("10" < "2" as strings)
    assert statistics.accuracy_table(res, shots=10)["top1"].tolist() == [85.0]


def test_a_set_far_below_the_judges_accuracy_is_named_in_the_headline():
    from mvc.report_text import fidelity_warnings

    cfg = load_config(REPO / "params/smoke.yaml")
    metrics = pd.DataFrame({"synthetic_set": ["real_train", "mvc_coarse", "sd_naive"],
                            "label_fidelity": [1.0, 0.40, 0.85], "judge_accuracy_on_real": [0.92] * 3})
    warnings = fidelity_warnings(cfg, metrics)
    assert len(warnings) == 1 and "mvc_coarse images carry their intended class 40%" in warnings[0]
    assert "92%" in warnings[0] and "mvc, mvc_two_phase" in warnings[0]  # the rows it concerns
    assert fidelity_warnings(cfg.model_copy(update={"report": cfg.report.model_copy(update={"fidelity_gap": 0.6})}),
                             metrics) == []
    blind = metrics.assign(judge_accuracy_on_real=0.25)  # a judge near chance cannot measure fidelity
    warnings = fidelity_warnings(cfg, blind)
    assert len(warnings) == 1 and "reads only 25% of real test images" in warnings[0]
    assert "metrics.judge_backbone" in warnings[0]


def test_upsampled_generation_and_indistinct_captions_are_said_in_the_headline():
    from mvc.report_text import design_warnings

    with pytest.warns(UserWarning, match="backbone.resolution \\(16\\) is below data.resolution \\(32\\)"):
        low = load_config(REPO / "params/smoke.yaml", ["data.resolution=32"])
    assert low.generation_upsampled
    metrics = pd.DataFrame({"synthetic_set": ["real_train", "mvc_coarse"], "distinct_caption_share": [0.4, 0.4]})
    said = design_warnings(low, metrics)
    assert len(said) == 2 and "drawn at 16 px" in said[0] and "upsampled to the 32 px" in said[0]
    assert "Only 40% of a class's labelled images have a caption of their own" in said[1]
    assert "mixing has little to mix" in said[1]
    same = load_config(REPO / "params/smoke.yaml")  # 16 px drawn, 16 px classified; captions mostly distinct
    assert not same.generation_upsampled
    assert design_warnings(same, metrics.assign(distinct_caption_share=0.8)) == []


@pytest.mark.parametrize("profile", sorted(p.name for p in (REPO / "params").glob("*.yaml")))
def test_no_profile_upsamples_its_synthetic_images(profile):
    """Every profile draws at or above the resolution its classifier reads (the paper profiles draw at 512 px)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        cfg = load_config(REPO / "params" / profile)
    assert cfg.backbone.resolution >= cfg.data.resolution
