"""Captioning and the classifier grid shared over processes: accelerate's (one GPU each) or local workers."""

from __future__ import annotations

import shutil

import pandas as pd

from mvc import artifacts, classify, state
from mvc.io import part_files
from tests.conftest import REPO, launch_two_processes, run_until, smoke_config


def _sets(cfg):
    return [f"--set=runs_root={cfg.paths.run.parent}", f"--set=reports_root={cfg.paths.report.parent}",
            "--set=device=cpu"]


def test_captioning_over_two_processes_equals_one(tmp_path):
    one, two = smoke_config(tmp_path / "one"), smoke_config(tmp_path / "two", "caption.batch_size=8")
    run_until(one, "caption")
    run_until(two, "data")
    out = launch_two_processes("caption", str(REPO / "params/smoke.yaml"), *_sets(two), "--set=caption.batch_size=8")
    assert out.returncode == 0, out.stderr[-3000:]
    assert state.stage_info(two, "caption")["processes"] == 2
    a, b = (pd.read_csv(c.paths.captions, keep_default_na=False) for c in (one, two))
    assert b["image_id"].is_unique and a.equals(b)  # every image once, the same captions
    assert not part_files(two.paths.captions)


def test_classifier_grid_over_two_processes_and_two_workers(smoke_generated, tmp_path):
    methods = "--set=classify.methods=[none,mixup,mvc]"
    results = {}
    for name, extra in (("accelerate", []), ("workers", ["classify.workers=2"])):
        cfg = smoke_config(tmp_path / name, "classify.methods=[none,mixup,mvc]", *extra)
        shutil.copytree(smoke_generated.paths.run, cfg.paths.run)
        (cfg.paths.stages / "classify.json").unlink(missing_ok=True)
        cfg.paths.results.unlink(missing_ok=True)
        if name == "accelerate":
            out = launch_two_processes("classify", str(REPO / "params/smoke.yaml"), *_sets(cfg), methods)
            assert out.returncode == 0, out.stderr[-3000:]
            assert state.stage_info(cfg, "classify")["processes"] == 2
        else:
            classify.classify_all(cfg, show_progress=False)
            assert state.stage_info(cfg, "classify")["workers"] == 2
        got = artifacts.load_results(cfg)
        assert len(got) == 3 * len(cfg.classify.seeds) and not got.duplicated(artifacts.RESULT_KEY).any()
        assert not part_files(cfg.paths.results)
        results[name] = got.set_index(artifacts.RESULT_KEY)["top1"].sort_index()
    # each run is seeded by itself: where it ran does not change what it learned (up to float summation order)
    assert (results["accelerate"] - results["workers"]).abs().max() <= 0.02
