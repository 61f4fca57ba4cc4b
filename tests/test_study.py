from __future__ import annotations

import collections
import json
import logging
import re
import shutil
import subprocess
import sys

import jupytext
import nbformat
import pandas as pd
import pytest

from mvc.paths import REPO_ROOT
from mvc.stages import NOTEBOOKS
from mvc.study import parse_notebooks
from tests.conftest import REPO


@pytest.mark.parametrize("name", sorted(NOTEBOOKS.values()))
def test_notebook_is_paired_clean_and_thin(name):
    ipynb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    script = jupytext.read(REPO / "notebooks" / name.replace(".ipynb", ".py"))
    pair = [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in script.cells]
    assert [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in ipynb.cells] == pair, \
        f"{name} and its .py differ: run `jupytext --sync notebooks/*.ipynb`"
    tagged = [c for c in ipynb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "params =" in tagged[0].source, name
    for cell in ipynb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, name
            assert not re.search(r"^\s*(def|class) ", cell.source, re.M), f"{name}: logic belongs in mvc, not a cell"


def test_parse_notebooks():
    assert parse_notebooks("01,03-05") == ["01", "03", "04", "05"]
    assert parse_notebooks(None) == list(NOTEBOOKS)
    with pytest.raises(ValueError, match="07"):
        parse_notebooks("05-07")
    with pytest.raises(ValueError, match="reversed"):
        parse_notebooks("05-03")


@pytest.mark.parametrize("option", ["--notebooks", "--notebooks="])
def test_notebooks_option(option, monkeypatch):
    """`--notebooks` picks notebooks, in both spellings; the retired `--stages` is an error."""
    from mvc import cli, study

    seen = {}
    monkeypatch.setattr(study, "run_study", lambda params, notebooks, *a, **kw: seen.setdefault("notebooks", notebooks))
    argv = [f"{option}01-02"] if option.endswith("=") else [option, "01-02"]
    assert cli.main(["study", str(REPO / "params/smoke.yaml"), *argv]) == 0
    assert seen["notebooks"] == "01-02"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["study", str(REPO / "params/smoke.yaml"), "--stages", "01"])


def test_run_study_runs_the_chosen_notebooks(tmp_path, monkeypatch):
    from mvc import study

    monkeypatch.setattr(study, "_run_notebooks", lambda cfg, chosen, *a: chosen)
    sets = [f"runs_root={tmp_path / 'runs'}", f"reports_root={tmp_path / 'reports'}"]
    assert study.run_study(REPO / "params/smoke.yaml", notebooks="02-03", overrides=sets) == ["02", "03"]
    assert study.run_study(REPO / "params/smoke.yaml", "01,04", sets) == ["01", "04"]
    with pytest.raises(TypeError):
        study.run_study(REPO / "params/smoke.yaml", overrides=sets, stages="01")


def test_notebooks_leave_out_accelerates_checkpoint_lines_not_its_warnings(tmp_path, capsys):
    """open_study quiets the INFO line accelerate logs per checkpoint file; warnings and mvc's INFO still show."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from mvc.notebook import QUIET_AT_INFO, open_study

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in QUIET_AT_INFO}
    try:
        open_study(str(REPO / "params/smoke.yaml"),
                   [f"runs_root={tmp_path / 'runs'}", f"reports_root={tmp_path / 'reports'}", "device=cpu"])
        AcceleratorState._reset_state()  # another test in this process may have set other options
        acc = Accelerator(cpu=True, mixed_precision="no")
        model = torch.nn.Linear(2, 2)
        acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
        acc.save_state(str(tmp_path / "checkpoint"))
        logging.getLogger("accelerate.checkpointing").warning("a warning still shows")
        logging.getLogger("mvc.state").info("so do mvc's own lines")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, was in levels.items():
            logging.getLogger(name).setLevel(was)
    err = capsys.readouterr().err
    assert (tmp_path / "checkpoint" / "random_states_0.pkl").exists()  # a checkpoint was saved, quietly
    assert "Saving current state" not in err and "saved in" not in err, err
    assert "WARNING accelerate.checkpointing: a warning still shows" in err
    assert "INFO mvc.state: so do mvc's own lines" in err


def _study(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "mvc", "study", str(REPO / "params/smoke.yaml"),
                           f"--set=runs_root={tmp_path / 'runs'}", f"--set=reports_root={tmp_path / 'reports'}", *args],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    """The smoke study run once through `mvc study` (papermill), for the tests of what it leaves behind."""
    tmp = tmp_path_factory.mktemp("study")
    out = _study(tmp)
    assert out.returncode == 0, out.stderr[-4000:]
    return tmp, out


@pytest.mark.slow
def test_smoke_study_end_to_end_through_papermill(smoke_study):
    tmp_path, out = smoke_study
    report = tmp_path / "reports" / "smoke"
    for fig in ("samples", "figure1_real_naive_mvc", "figure2_coarse_fine", "figure3_training_pipeline",
                "figure4_generation_pipeline", "figure5_real_mvc_naive", "classification_bars", "finetune_loss"):
        assert (report / "figures" / f"{fig}.png").exists() and (report / "figures" / f"{fig}.pdf").exists()
    assert (report / "figures" / "finetune_samples.png").exists()  # drawn by the generate stage, not a cell
    runs = pd.read_csv(report / "results.csv")  # the per-seed runs beside the tables computed from them
    assert {"method", "seed"} <= set(runs) and len(runs) == len(pd.read_csv(tmp_path / "runs/smoke/results.csv"))
    for table in ("classification", "image_metrics", "primary_contrast", "paired_tests", "pseudo_labels"):
        for ext in ("csv", "md", "tex"):
            assert (report / "tables" / f"{table}.{ext}").exists()
    assert not list((report / "tables").glob("ablation.*"))  # no ablation grid here: left out, not empty
    assert "MVC under one change each" not in (report / "index.html").read_text()
    assert "<b>The primary contrast.</b> Declared in the params before the run: mvc - randaugment" in \
        (report / "index.html").read_text()
    index = (report / "index.html").read_text()  # under each item: its file and the commands that make it
    assert "<code>tables/classification.csv</code> (and .md, .tex), made by <code>mvc study params/smoke.yaml" in index
    assert "from the finished runs/: <code>mvc report params/smoke.yaml" in index and "(at git " in index
    assert index.count("<p class=cmd>") == index.count("<figcaption>") + index.count("<div class=table>")
    prov = json.loads((report / "provenance.json").read_text())
    assert set(prov["stages"]) == set(NOTEBOOKS)
    assert all(s["wall_s"] > 0 and s["peak_rss_mb"] > 0 for s in prov["stages"].values())
    assert prov["packages"]["torch"] and prov["params"]["study"] == "smoke" and prov["git_revision"]
    assert "Unable to parse" not in out.stderr and "unknown parameter" not in out.stderr  # papermill's warnings
    assert re.search(r"03 finetune.*\d+/\d+", out.stderr)  # the running stage's progress, in the terminal
    # a log that is not a terminal (this one is a pipe): whole lines, at most one per tenth of a bar (and per 30 s)
    assert "\r" not in out.stderr
    bars = collections.Counter(m.group(1) for m in re.finditer(r"^(.+?): +\d+%", out.stderr, re.M))
    assert bars["03 finetune"] >= 1 and max(bars.values()) <= 12, bars
    assert len(out.stderr.splitlines()) < 200


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NOTEBOOKS.values()))
def test_executed_notebooks_show_figures_and_no_noise(smoke_study, name):
    tmp_path, _ = smoke_study
    path = tmp_path / "reports" / "smoke" / "notebooks" / name
    text = path.read_text()
    nb = nbformat.reads(text, as_version=4)
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    if not name.startswith("06"):
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{name}: no inline figure"
    streams = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "\r" not in streams, f"{name}: progress-bar output in the executed notebook"
    assert "Saving current state" not in streams, f"{name}: accelerate's checkpoint lines in the executed notebook"
    assert "LOAD REPORT" not in streams, f"{name}: transformers' weight-loading report in the executed notebook"
    assert str(REPO_ROOT) not in text, f"{name}: the machine's absolute repository path"


@pytest.mark.slow
def test_rerun_skips_up_to_date_notebooks(smoke_study):
    tmp_path, _ = smoke_study
    again = _study(tmp_path, "--notebooks", "01-02")
    assert again.returncode == 0 and "up to date" in again.stderr


@pytest.mark.slow
def test_report_reads_in_order_in_headless_chromium(smoke_study):
    tmp_path, _ = smoke_study
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    index = tmp_path / "reports" / "smoke" / "index.html"
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=10000",
                          "--dump-dom", index.as_uri()], capture_output=True, text=True, timeout=120)
    total = re.search(r'data-images="(\d+)"', dom.stdout)
    loaded = re.search(r'data-images-loaded="(\d+)"', dom.stdout)
    assert total and loaded, dom.stderr[-2000:]
    assert int(total.group(1)) >= 10 and loaded.group(1) == total.group(1)
    headings = re.findall(r"<h2>(.*?)</h2>", dom.stdout)
    assert headings == ["Main result", "What the method generates", "Ablations and tests", "Image metrics",
                        "Diagnostics", "Executed notebooks", "Resolved params", "Provenance"]
    main = dom.stdout.split("<h2>Main result</h2>")[1].split("<h2>")[0]
    assert "Table 1." in main and "Figure 1." in main and "figure1_real_naive_mvc" in main
    assert "notebooks/05_classification.html" in dom.stdout


def test_a_failing_stage_exits_non_zero_with_the_notebook_named(tmp_path):
    out = _study(tmp_path, "--notebooks", "03")
    assert out.returncode != 0
    assert "the first stage to run is 'data'" in out.stderr and "--notebooks 01-06" in out.stderr


def test_a_report_regenerated_from_a_clean_tree_is_not_dirty(tmp_path, monkeypatch):
    """Provenance names the commit; the study's own report folder, which the run rewrites, does not make it dirty,
    any other tracked change does."""
    from mvc import study

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "reports" / "s").mkdir(parents=True)
    (tmp_path / "reports" / "s" / "table.csv").write_text("a\n1\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "init")
    monkeypatch.setattr(study, "REPO_ROOT", tmp_path)
    (tmp_path / "reports" / "s" / "table.csv").write_text("a\n2\n")
    assert not study.git_revision(tmp_path / "reports" / "s").endswith("+dirty")
    assert study.git_revision().endswith("+dirty")
    (tmp_path / "code.py").write_text("x = 2\n")
    assert study.git_revision(tmp_path / "reports" / "s").endswith("+dirty")
