from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import nbformat
import pytest

from mvc.study import NOTEBOOKS, parse_stages
from tests.conftest import REPO


def test_every_notebook_has_no_outputs_and_a_parameters_cell():
    found = sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb"))
    assert found == sorted(NOTEBOOKS.values())
    for name in found:
        nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and "params =" in tagged[0].source, name
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, name


def test_parse_stages():
    assert parse_stages("01,03-05") == ["01", "03", "04", "05"]
    assert parse_stages(None) == list(NOTEBOOKS)
    with pytest.raises(ValueError, match="07"):
        parse_stages("05-07")


def _study(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "mvc", "study", str(REPO / "params/smoke.yaml"),
                           f"--set=runs_root={tmp_path / 'runs'}", f"--set=reports_root={tmp_path / 'reports'}", *args],
                          capture_output=True, text=True, timeout=600)


def test_smoke_study_end_to_end_through_papermill(tmp_path):
    out = _study(tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    report = tmp_path / "reports" / "smoke"
    for name in NOTEBOOKS.values():
        assert (report / "notebooks" / name).exists()
    for fig in ("samples", "figure1_real_naive_mvc", "figure2_coarse_fine", "figure3_training_pipeline",
                "figure4_generation_pipeline", "figure5_real_mvc_naive", "classification_bars"):
        assert (report / "figures" / f"{fig}.png").exists() and (report / "figures" / f"{fig}.pdf").exists()
    for table in ("classification", "ablation", "image_metrics", "paired_difference"):
        for ext in ("csv", "md", "tex"):
            assert (report / "tables" / f"{table}.{ext}").exists()
    prov = json.loads((report / "provenance.json").read_text())
    assert set(prov["stages"]) == set(NOTEBOOKS)
    assert all(s["wall_s"] > 0 and s["peak_rss_mb"] > 0 for s in prov["stages"].values())
    assert prov["packages"]["torch"] and prov["params"]["study"] == "smoke" and prov["git_revision"]

    # a second run skips every notebook whose stages are up to date
    again = _study(tmp_path, "--stages", "01-02")
    assert again.returncode == 0 and "up to date" in again.stderr

    # the page renders in headless Chromium with every image decoded
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (the CI script installs it)")
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                          "--dump-dom", (report / "index.html").as_uri()], capture_output=True, text=True, timeout=120)
    total = re.search(r'data-images="(\d+)"', dom.stdout)
    loaded = re.search(r'data-images-loaded="(\d+)"', dom.stdout)
    assert total and loaded, dom.stderr[-2000:]
    assert int(total.group(1)) >= 7 and loaded.group(1) == total.group(1)
    assert "notebooks/05_classification.html" in dom.stdout


def test_a_failing_stage_exits_non_zero_with_the_notebook_named(tmp_path):
    out = _study(tmp_path, "--stages", "03")
    assert out.returncode != 0
    assert "data" in out.stderr and "01" in out.stderr
