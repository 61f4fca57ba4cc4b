"""`mvc select`: the recipe chosen on the validation split and the image measures, never on test."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from mvc import artifacts
from mvc.config import load_config
from tests.conftest import run_until, smoke_config


def test_the_rule_takes_the_most_faithful_trial_within_the_copy_limit_then_the_most_novel():
    from mvc.select import choose

    rows = pd.DataFrame({"label_fidelity": [0.99, 0.90, 0.95, 0.948], "copies": [0.20, 0.0, 0.01, 0.0],
                         "copies_pool": [0.0, 0.0, 0.0, np.nan], "copies_source": [np.nan] * 4,
                         "nn_distance_vs_real": [0.5, 3.0, 1.0, 2.0]})
    pick, why = choose(rows, max_copies=0.05, tolerance=0.001)
    assert pick == 2 and "highest label fidelity" in why  # trial 0 copies; trial 3 is 0.002 below
    pick, why = choose(rows, max_copies=0.05, tolerance=0.01)
    assert pick == 3 and "most novel" in why  # within 0.01 of the best: the more novel one
    rows["copies_pool"] = [0.3, 0.3, 0.3, 0.3]  # copies of the pool count as copies
    pick, why = choose(rows, max_copies=0.05, tolerance=0.01)
    assert "no trial kept copies" in why


class _Guarded(np.ndarray):
    """The cached images, raising when a test image is read."""

    test_rows: frozenset = frozenset()

    def __getitem__(self, key):
        rows = np.arange(len(self))[key if not isinstance(key, tuple) else key[0]]
        if set(np.atleast_1d(rows).tolist()) & self.test_rows:
            raise AssertionError("the selection read a test image")
        return np.asarray(super().__getitem__(key))


@pytest.mark.slow
def test_selection_never_reads_test_and_writes_its_log_and_a_params_file(tmp_path, monkeypatch):
    from mvc.select import run_selection, selection_view

    over = ["classify.methods=[none, randaugment, sd_naive, mvc]", "generate.sets=[sd_naive]",
            "generate.modes=[coarse]", "classify.mvc_modes=[coarse]", "select.finetune_steps=[3, 6]",
            "select.guidance_text=[2.0, 4.0]", "select.guidance_image=[1.5]", "select.set_guidance=[2.0, 5.0]",
            "select.randaugment_magnitude=[5, 9]", "select.randaugment_num_ops=[1]", "select.p_synthetic=[0.5]",
            "select.classifier_backbone=[small_cnn, efficientnet_lite0]", "select.seeds=[0]"]
    cfg = smoke_config(tmp_path, *over)
    run_until(cfg, "backbone")  # the study's shared stages: the selection adopts them
    stored = artifacts.stored_splits(cfg)
    test_rows = frozenset(stored.loc[stored["split"] == "test", "image_id"].tolist())
    real = artifacts.load_images

    def guarded(c):
        images = real(c).view(_Guarded)
        images.test_rows = test_rows
        return images

    with pytest.raises(AssertionError, match="test image"):
        guarded(cfg)[sorted(test_rows)[:2]]
    for module in [m for name, m in sys.modules.items() if name.startswith("mvc") and hasattr(m, "load_images")]:
        monkeypatch.setattr(module, "load_images", guarded)
    params = tmp_path / "study.yaml"
    params.write_text("extends: " + str(artifacts.__file__).replace("mvc/artifacts.py", "params/smoke.yaml") + "\n")
    out = run_selection(cfg, params, tmp_path / "chosen.yaml")

    view = selection_view(cfg)
    assert view.metrics.judge_scored_on == "val" and view.classify.evaluate_on == "val"
    assert view.metrics.reference_split == "val" and "test" not in view.metrics.judge_splits
    log = pd.read_csv(cfg.paths.report / "selection" / "selection.csv")
    assert log.groupby("subject").size().to_dict() == {"mvc": 4, "sd_naive": 2, "classifier_backbone": 2,
                                                       "randaugment": 2, "p_synthetic": 1}
    assert (log.groupby("subject")["chosen"].sum() == 1).all()
    assert log.loc[log["phase"] == "generator", "label_fidelity"].between(0, 1).all()
    chosen = load_config(out, [f"runs_root={tmp_path / 'runs'}"])
    mvc_pick = log[(log["subject"] == "mvc") & log["chosen"]].iloc[0]
    assert f"finetune.steps={chosen.finetune.steps}" in mvc_pick["knobs"]
    assert f"generate.guidance_text={chosen.generate.guidance_text}" in mvc_pick["knobs"]
    naive_pick = log[(log["subject"] == "sd_naive") & log["chosen"]].iloc[0]["knobs"]
    assert naive_pick == f"generate.set_guidance.sd_naive={chosen.generate.set_guidance['sd_naive']}"
    assert chosen.classify.randaugment_magnitude in (5, 9) and chosen.study == cfg.study
    backbones = log[log["subject"] == "classifier_backbone"].set_index("knobs")["val_top1"]
    assert chosen.classify.backbone == backbones.idxmax().split("classify.backbone=")[1].split(",")[0]
    assert chosen.classify.pretrained == (chosen.classify.backbone == "efficientnet_lite0")
    assert not chosen.select.run_first  # the chosen recipe's file never selects again
    assert artifacts.stored_splits(view).equals(stored)  # the study's splits, adopted, not redrawn
    assert "test never read" in (cfg.paths.report / "selection" / "selection.md").read_text()

    stamps = {f: f.stat().st_mtime_ns for f in view.paths.stages.glob("*.json")}
    run_selection(cfg, params, tmp_path / "chosen.yaml")  # finished trials are not run again
    assert pd.read_csv(cfg.paths.report / "selection" / "selection.csv").equals(log)
    assert {f: f.stat().st_mtime_ns for f in view.paths.stages.glob("*.json")} == stamps


def test_study_with_run_first_selects_then_runs_the_notebooks_on_the_chosen_params(tmp_path, monkeypatch):
    """`select.run_first`: the shared stages in the study, the selection, then the notebooks on its params file
    (the user's overrides on top); the stub below stands in for the trials, which the test above runs."""
    from mvc import select, study
    from mvc.state import is_done

    monkeypatch.setattr(select, "select_recipe", lambda cfg: select.Selection(
        cfg, select.selection_view(cfg), chosen={"finetune.steps": 7, "generate.sets": []}))
    seen = {}
    monkeypatch.setattr(study, "_run_notebooks", lambda cfg, chosen, params_path, overrides, force, progress:
                        seen.update(cfg=cfg, params=params_path, overrides=overrides))
    params = tmp_path / "study.yaml"
    params.write_text("extends: " + str(artifacts.__file__).replace("mvc/artifacts.py", "params/smoke.yaml") + "\n")
    overrides = [f"runs_root={tmp_path / 'runs'}", f"reports_root={tmp_path / 'reports'}", "device=cpu",
                 "select.run_first=true", "classify.steps=5"]
    cfg = load_config(params, overrides)
    study.run_study(params, overrides=overrides, show_progress=False)
    assert seen["params"] == cfg.paths.report / "selection" / "selected.yaml"
    assert seen["cfg"].finetune.steps == 7 and seen["cfg"].classify.steps == 5  # chosen, and the user's override
    assert seen["overrides"] == overrides and seen["cfg"].study == cfg.study
    assert not load_config(seen["params"]).select.run_first  # the chosen file alone never selects again
    assert all(is_done(cfg, s) for s in select.SHARED_STAGES)  # in the study, for the selection to adopt
    assert (cfg.paths.report / "selection" / "selection.md").exists()
