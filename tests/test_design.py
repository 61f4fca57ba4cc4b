"""The study design of the few-shot curve and the replicates: every unit (shots level x replicate) fine-tuned and
generated, nested train splits, classifier seeds paired with replicates, intervals over replicate means."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mvc import artifacts, state, statistics
from mvc.config import ConfigError, load_config
from tests.conftest import REPO, run_until, smoke_config


@pytest.fixture(scope="module")
def curve(tmp_path_factory):
    """The smoke study at shots [1, 2] with 2 replicates, every stage run."""
    cfg = smoke_config(tmp_path_factory.mktemp("curve"), "data.shots=[2, 1]", "replicates=2",
                       "classify.methods=[none, randaugment, sd_img2img, sd_finetuned, mvc]",
                       "classify.seeds=[0, 1, 2, 3]",
                       "generate.modes=[coarse]", "classify.mvc_modes=[coarse]")
    run_until(cfg, "report")
    return cfg


def test_shots_levels_are_validated():
    assert load_config(REPO / "params/smoke.yaml", ["data.shots=[5, 1, 2]"]).data.shot_levels == [1, 2, 5]
    for bad in ("data.shots=[]", "data.shots=[2, 2]", "data.shots=[0, 1]"):
        with pytest.raises(ConfigError, match="data.shots"):
            load_config(REPO / "params/smoke.yaml", [bad])
    with pytest.raises(ConfigError, match="replicates"):
        load_config(REPO / "params/smoke.yaml", ["replicates=0"])


@pytest.mark.slow
def test_every_unit_has_its_models_and_sets(curve):
    units = curve.units()
    assert [u.unit_name for u in units] == [None, "shots-2_rep-1", "shots-1_rep-0", "shots-1_rep-1"]
    for u in units:
        assert u.paths.mvc_model.is_dir() and artifacts.model_path(u, "sd_finetuned").is_dir()
        for name in artifacts.synthetic_set_names(u.generate):
            assert (u.paths.synthetic / name / "manifest.csv").exists()
    assert units[1].finetune.seed == curve.finetune.seed + 1 and units[1].generate.seed == curve.generate.seed + 1
    assert curve.stage_hash("generate") == units[3].stage_hash("generate")


@pytest.mark.slow
def test_smaller_levels_take_the_first_images_of_each_class(curve):
    full, one = artifacts.load_splits(curve), artifacts.load_splits(curve.unit(1, 0))
    train2 = full[full["split"] == "train"].sort_values("image_id")
    train1 = set(one.loc[one["split"] == "train", "image_id"])
    assert len(train2) == 2 * 3 and train1 == set(train2.groupby("label").head(1)["image_id"])
    assert (one["split"] == "unused").sum() == 3 and (full["split"] == "pool").sum() == (one["split"] == "pool").sum()
    for r in (0, 1):
        manifest = artifacts.load_manifest(curve.unit(1, r), "mvc_coarse")
        assert set(manifest["source_image_id"]) == train1
        assert len(manifest) == 3 * curve.generate.images_per_source


@pytest.mark.slow
def test_replicates_draw_other_images_from_the_same_sources(curve):
    a, ma = artifacts.load_synthetic(curve.unit(2, 0), "mvc_coarse")
    b, mb = artifacts.load_synthetic(curve.unit(2, 1), "mvc_coarse")
    assert ma["source_image_id"].tolist() == mb["source_image_id"].tolist()
    assert (ma["seed"] != mb["seed"]).all()
    assert np.abs(a.astype(float) - b.astype(float)).mean() > 1


@pytest.mark.slow
def test_classifier_seeds_pair_with_replicates_and_intervals_cover_them(curve):
    res = artifacts.load_results(curve)
    assert len(res) == 2 * 5 * 4
    assert set(res["shots"].astype(str)) == {"1", "2"}
    assert set(zip(res["seed"], res["replicate"])) == {(0, 0), (1, 1), (2, 0), (3, 1)}
    table = statistics.accuracy_table(res, shots=2).set_index("method")
    r = res[(res["method"] == "mvc") & (res["shots"].astype(str) == "2")]
    per_replicate = (r["top1"] * 100).groupby(r["replicate"]).mean().to_numpy()
    assert table.loc["mvc", "ci95"] == round(statistics.mean_ci(per_replicate)[1], 2)
    assert table.loc["mvc", "top1"] == round(per_replicate.mean(), 2)  # the estimate the interval is about
    assert table.loc["mvc", "replicates"] == 2 and table.loc["mvc", "seeds"] == 4
    tests = statistics.paired_tests(res, "mvc", "randaugment", shots=2)
    assert (tests["replicates"] == 2).all()


@pytest.mark.slow
def test_report_draws_the_few_shot_curve_and_says_what_intervals_cover(curve):
    tables, figures = curve.paths.tables, curve.paths.figures
    few = pd.read_csv(tables / "few_shot.csv")
    assert set(few["shots"].astype(str)) == {"1", "2"} and {"mvc", "sd_finetuned", "none"} <= set(few["method"])
    assert (figures / "few_shot_curve.png").exists()
    assert "replicates of the generative pipeline" in (tables / "classification.md").read_text()
    assert "too wide to read" in (tables / "classification.md").read_text()  # R = 2: one degree of freedom
    tests = pd.read_csv(tables / "paired_tests.csv")
    assert set(tests["shots"].astype(str)) == {"1", "2"}
    main = pd.read_csv(tables / "classification.csv")
    assert set(main["method"]) == {"none", "randaugment", "sd_img2img", "sd_finetuned", "mvc"}


def test_a_new_replicate_reuses_the_existing_ones(tmp_path):
    """replicates 1 -> 2: only replicate 1 is fine-tuned and generated; replicate 0's model and images stay as
    they were (its folders are not rewritten); the classifier grid reruns (seed i pairs with replicate i mod R)."""
    one = smoke_config(tmp_path, "classify.methods=[none, mvc]", "generate.sets=[]", "generate.modes=[coarse]")
    run_until(one, "generate")
    before = {p: p.stat().st_mtime_ns for p in one.paths.mvc_model.rglob("*") if p.is_file()}
    images = {p: p.stat().st_mtime_ns for p in one.paths.synthetic.rglob("*.png")}
    two = smoke_config(tmp_path, "classify.methods=[none, mvc]", "generate.sets=[]", "generate.modes=[coarse]",
                       "replicates=2")
    assert two.stage_hash("finetune") == one.stage_hash("finetune")
    assert two.stage_hash("generate") == one.stage_hash("generate")
    assert two.stage_hash("classify") != one.stage_hash("classify")
    run_until(two, "generate")
    assert {p: p.stat().st_mtime_ns for p in one.paths.mvc_model.rglob("*") if p.is_file()} == before
    assert {p: p.stat().st_mtime_ns for p in one.paths.synthetic.rglob("*.png")} == images
    new = two.unit(two.data.max_shots, 1)
    assert new.paths.mvc_model.is_dir() and (new.paths.synthetic / "mvc_coarse" / "manifest.csv").exists()
    assert set(state.stage_info(two, "generate")["unit_names"]) == {"shots-4_rep-0", "shots-4_rep-1"}


def _files(folder) -> dict:
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_adding_and_removing_a_level_runs_only_the_units_that_change(tmp_path):
    """[1, 2] -> [1, 2, 3] -> [1, 3]: the splits, captions and backbone are shared by every level (the labelled
    candidates are data.labelled_per_class, not the largest level); each existing unit keeps its model, images,
    measures and classifier runs, the old main unit's moving to its unit folders; only the new level runs."""
    over = ("data.labelled_per_class=3", "classify.methods=[none, mvc]", "generate.sets=[]",
            "generate.modes=[coarse]", "classify.mvc_modes=[coarse]")
    two = smoke_config(tmp_path, "data.shots=[1, 2]", *over)
    run_until(two, "report")
    kept = {s: state.stage_info(two, s)["finished"] for s in ("data", "caption", "embed", "backbone")}
    main_model, level1 = _files(two.paths.mvc_model), _files(two.unit(1, 0).paths.mvc_model)
    images = _files(two.paths.synthetic)
    before = artifacts.load_results(two)
    measured = artifacts.load_image_metrics(two, all_units=True)

    three = smoke_config(tmp_path, "data.shots=[1, 2, 3]", *over)
    assert all(three.stage_hash(s) == two.stage_hash(s) for s in ("data", "caption", "embed", "backbone", "finetune",
                                                                    "generate", "metrics", "classify"))
    run_until(three, "report")
    assert {s: state.stage_info(three, s)["finished"] for s in kept} == kept  # nothing before fine-tuning reran
    moved = three.unit(2, 0)
    assert moved.unit_name == "shots-2_rep-0" and _files(moved.paths.mvc_model) == main_model
    assert _files(moved.paths.synthetic) == images and _files(three.unit(1, 0).paths.mvc_model) == level1
    assert three.paths.mvc_model.is_dir() and (three.paths.synthetic / "mvc_coarse" / "manifest.csv").exists()
    splits = artifacts.load_splits(three)
    assert (splits["split"] == "train").sum() == 3 * 3
    after = artifacts.load_results(three)
    assert set(after["shots"].astype(str)) == {"1", "2", "3"}
    old = after[after["shots"].astype(str) != "3"].sort_values(["shots", "method", "seed"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(old, before.sort_values(["shots", "method", "seed"]).reset_index(drop=True))
    measures = artifacts.load_image_metrics(three, all_units=True)
    assert set(measures["shots"]) == {"1", "2", "3"}
    pd.testing.assert_frame_equal(measures[measures["shots"] != "3"].reset_index(drop=True), measured)

    fewer = smoke_config(tmp_path, "data.shots=[1, 3]", *over)
    run_until(fewer, "report")
    assert state.stage_info(fewer, "classify")["finished"] == state.stage_info(three, "classify")["finished"]
    assert set(artifacts.load_results(fewer)["shots"].astype(str)) == {"1", "3"}
    assert "| 2 |" not in (fewer.paths.tables / "few_shot.md").read_text()


@pytest.mark.slow
def test_replicates_that_redraw_the_labelled_images(tmp_path, monkeypatch):
    """redraw_labelled: replicate 1 labels other candidates than replicate 0, nested across levels, never from val,
    test or the pool; every method (no augmentation too) trains replicate r on replicate r's draw."""
    cfg = smoke_config(tmp_path, "data.shots=[1, 2]", "data.labelled_per_class=4", "replicates=2",
                       "redraw_labelled=true", "classify.methods=[none, mvc]", "generate.sets=[]",
                       "generate.modes=[coarse]", "classify.mvc_modes=[coarse]", "classify.seeds=[0, 1]")
    run_until(cfg, "classify")
    stored = artifacts.stored_splits(cfg)
    candidates = set(stored.loc[stored["split"] == "train", "image_id"])
    held = set(stored.loc[stored["split"].isin(["val", "test", "pool"]), "image_id"])
    train = {(s, r): set((t := artifacts.load_splits(cfg.unit(s, r))).loc[t["split"] == "train", "image_id"])
             for s in (1, 2) for r in (0, 1)}
    assert train[(2, 0)] != train[(2, 1)] and train[(1, 1)] < train[(2, 1)] and train[(1, 0)] < train[(2, 0)]
    assert all(t <= candidates and not t & held and len(t) == s * 3 for (s, _), t in train.items())
    manifest = artifacts.load_manifest(cfg.unit(2, 1), "mvc_coarse")
    assert set(manifest["source_image_id"]) == train[(2, 1)]
    from mvc.classifiers import RunSpec
    from mvc.classify import load_classification_data, run_specs
    data = {r: load_classification_data(cfg.unit(2, r)) for r in (0, 1)}
    assert not torch.equal(data[0].train_x, data[1].train_x)
    res = artifacts.load_results(cfg)
    none = res[(res["method"] == "none") & (res["shots"].astype(str) == "2")].set_index("seed")
    from mvc import classify

    views = []
    real = classify.load_classification_data
    monkeypatch.setattr(classify, "load_classification_data",
                        lambda view, *a, **k: views.append((view.shots_now, view.replicate)) or real(view, *a, **k))
    part = tmp_path / "again.csv"
    run_specs(cfg, [RunSpec("none", 1, "main", (), 0.0, shots=2, replicate=1)], part)
    assert views == [(2, 1)]  # no augmentation, trained on replicate 1's own labelled images
    assert pd.read_csv(part)["top1"].iloc[0] == none.loc[1, "top1"]  # as the stage trained it


@pytest.mark.slow
def test_a_level_added_after_an_interrupted_fine_tuning_never_takes_another_levels_model(tmp_path, monkeypatch):
    """[1, 2] killed while fine-tuning level 1 (the main unit, level 2, already saved; no stage record), then
    [1, 2, 3]: the level-2 model moves to its unit folder and level 3 is trained, not given level 2's model."""
    import json

    from mvc import finetune

    over = ("data.labelled_per_class=3", "classify.methods=[none, mvc]", "generate.sets=[]",
            "generate.modes=[coarse]", "classify.mvc_modes=[coarse]")
    two = smoke_config(tmp_path, "data.shots=[1, 2]", *over)
    run_until(two, "backbone")
    real = finetune.train

    def killed_at_level_one(cfg, *args, **kwargs):
        if cfg.shots_now == 1:
            raise KeyboardInterrupt  # the process dies here: the main unit is saved, the stage is not recorded
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(finetune, "train", killed_at_level_one)
    with pytest.raises(KeyboardInterrupt):
        finetune.finetune(two, show_progress=False)
    monkeypatch.setattr(finetune, "train", real)
    assert not (two.paths.stages / "finetune.json").exists()
    level2 = _files(two.paths.mvc_model)

    three = smoke_config(tmp_path, "data.shots=[1, 2, 3]", *over)
    finetune.finetune(three, show_progress=False)
    assert _files(three.unit(2, 0).paths.mvc_model) == level2  # moved, not retrained
    assert json.loads((three.paths.model_work("finetune") / "summary.json").read_text())["shots"] == 3
    assert all(u.paths.mvc_model.is_dir() for u in three.units())
