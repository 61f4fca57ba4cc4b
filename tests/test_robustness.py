"""Bad input and faults: each gets a clear error naming the file or field and the fix; nothing is left
half-written; a second run on the same study is refused; a damaged output is found."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import nbformat
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mvc import artifacts, cli, data, state, study
from mvc.data import DataError
from mvc.imaging import to_array
from mvc.io import append_rows
from mvc.lock import StudyLocked, study_lock
from tests.conftest import REPO, run_until, smoke_config, write_png


def _mvc(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "mvc", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _sets(tmp_path):
    return [f"--set=runs_root={tmp_path / 'runs'}", f"--set=reports_root={tmp_path / 'reports'}", "--set=device=cpu"]


# ----------------------------------------------------------------------------------------------------------
# one run per study


def test_a_second_run_on_the_same_study_fails_at_once_naming_the_holder(tmp_path):
    cfg = smoke_config(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from mvc.lock import study_lock\n"
                               f"with study_lock(Path({str(cfg.paths.run)!r})):\n"
                               "    print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for command in (["classify"], ["study", "--notebooks", "05"]):
            start = time.time()
            out = _mvc(command[0], str(REPO / "params/smoke.yaml"), *command[1:], *_sets(tmp_path))
            assert out.returncode == 2, out.stderr[-2000:]
            assert f"PID {holder.pid}" in out.stderr and "in use" in out.stderr
            assert time.time() - start < 60  # at once, not after waiting
        with pytest.raises(StudyLocked):
            with study_lock(cfg.paths.run):
                pass
    finally:
        holder.kill()
        holder.wait()
    with study_lock(cfg.paths.run):  # released when its holder ends
        with study_lock(cfg.paths.run):  # re-entrant in one process
            pass


def test_readers_drop_a_run_recorded_twice(tmp_path):
    cfg = smoke_config(tmp_path)
    row = {c: 0 for c in artifacts.RESULT_COLUMNS} | {"method": "none", "seed": 0, "variant": "main", "shots": 4,
                                                      "top1": 0.5,
                                                      "params_hash": cfg.stage_hash("classify")}
    append_rows(cfg.paths.results, pd.DataFrame([row, row, {**row, "seed": 1}]))
    got = artifacts.load_results(cfg, require_done=False)
    assert len(got) == 2 and not got.duplicated(artifacts.RESULT_KEY).any()


# ----------------------------------------------------------------------------------------------------------
# images


def _decoded(img: Image.Image, channels: int = 1) -> np.ndarray:
    return to_array(img, 16, channels)


def test_every_image_mode_becomes_8_bit_without_clipping():
    ramp8 = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))  # 16x16, 0..240
    ramp16 = ramp8.astype(np.uint16) * 257  # the same ramp on 0..65535
    expected = ramp8.astype(int)
    cases = {
        "L": Image.fromarray(ramp8, "L"),
        "RGB": Image.fromarray(np.stack([ramp8] * 3, -1), "RGB"),
        "I;16": Image.fromarray(ramp16),
        "I": Image.fromarray(ramp16.astype(np.int32)),
        "P": Image.fromarray(ramp8, "L").convert("P"),
    }
    assert cases["I;16"].mode == "I;16" and cases["I"].mode == "I"
    for mode, img in cases.items():
        got = _decoded(img)[..., 0].astype(int)
        assert np.abs(got - expected).max() <= 1, mode
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:8, :, 3] = 255  # top half opaque red, bottom half transparent
    out = to_array(Image.fromarray(rgba, "RGBA"), 16, 3)
    assert (out[0, 0] == [200, 0, 0]).all() and (out[15, 0] == [255, 255, 255]).all()  # flattened onto white
    black = to_array(Image.fromarray(rgba, "RGBA"), 16, 3, background="black")
    assert (black[15, 0] == [0, 0, 0]).all()


def test_sixteen_bit_pngs_are_rescaled_through_the_data_stage(tmp_path):
    ramp = np.linspace(0, 65535, 256).reshape(16, 16).astype(np.uint16)
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(ramp).save(tmp_path / "data" / cls / f"{i}.png")
    cfg = load_imagefolder(tmp_path, "data.shots=2", "data.val_per_class=1", "data.channels=1")
    data.prepare_dataset(cfg, show_progress=False)
    assert 120 < artifacts.load_images(cfg).mean() < 135  # a 0..65535 ramp averages mid-grey, not 98% white


def load_imagefolder(tmp_path, *extra):
    from mvc.config import load_config

    return load_config(REPO / "params/imagefolder.yaml", [f"runs_root={tmp_path / 'runs'}",
                                                          f"reports_root={tmp_path / 'reports'}", "device=cpu",
                                                          f"data.root={tmp_path / 'data'}", "data.resolution=16",
                                                          *extra])


# ----------------------------------------------------------------------------------------------------------
# classes and counts


def _folder(tmp_path, counts: dict[str, int]):
    rng = np.random.default_rng(0)
    for cls, n in counts.items():
        for i in range(n):
            write_png(tmp_path / "data" / cls / f"{i}.png", rng, 12)


def test_one_class_is_an_error(tmp_path):
    _folder(tmp_path, {"cat": 10})
    with pytest.raises(DataError, match="at least two classes"):
        data.prepare_dataset(load_imagefolder(tmp_path, "data.shots=2"), show_progress=False)


def test_a_short_class_is_named_or_allowed_and_recorded(tmp_path):
    _folder(tmp_path, {"cat": 12, "dog": 4})
    cfg = load_imagefolder(tmp_path, "data.shots=5", "data.val_per_class=1")
    with pytest.raises(DataError) as err:
        data.prepare_dataset(cfg, show_progress=False)
    assert "dog" in str(err.value) and "train 2 of 5" in str(err.value) and "data.allow_fewer" in str(err.value)
    assert not cfg.paths.splits.exists()  # nothing half-written
    allowed = load_imagefolder(tmp_path, "data.shots=5", "data.val_per_class=1", "data.allow_fewer=true")
    splits = data.prepare_dataset(allowed, show_progress=False)
    assert (splits[(splits["class_dir"] == "dog")]["split"] == "train").sum() == 2
    assert state.stage_info(allowed, "data")["short_classes"] == ["dog: train 2 of 5"]


def test_a_short_pool_is_named_at_the_data_stage(tmp_path):
    _folder(tmp_path, {"cat": 8, "dog": 8})
    args = ("data.shots=2", "data.val_per_class=1", "data.pool_per_class=10", "data.test_per_class=2")
    with pytest.raises(DataError, match="cat: pool 3 of 10.*data.pool_per_class"):
        data.prepare_dataset(load_imagefolder(tmp_path, *args), show_progress=False)
    allowed = load_imagefolder(tmp_path, *args, "data.allow_fewer=true")
    data.prepare_dataset(allowed, show_progress=False)
    assert state.stage_info(allowed, "data")["short_classes"] == ["cat: pool 3 of 10", "dog: pool 3 of 10"]


@pytest.mark.parametrize("pair", [("Cat", "cat"), ("sea_lion", "sea-lion")])
def test_two_folders_that_become_one_class_name_are_named(tmp_path, pair):
    _folder(tmp_path, {pair[0]: 6, pair[1]: 6, "dog": 6})
    with pytest.raises(DataError) as err:
        data.prepare_dataset(load_imagefolder(tmp_path, "data.shots=2"), show_progress=False)
    assert repr(pair[0]) in str(err.value) and repr(pair[1]) in str(err.value)


# ----------------------------------------------------------------------------------------------------------
# folders that cannot be written


def test_an_unwritable_runs_folder_is_named_and_nothing_is_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = _mvc("data", str(REPO / "params/smoke.yaml"), f"--set=runs_root={blocker / 'runs'}",
               f"--set=reports_root={tmp_path / 'reports'}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"cannot write to {blocker / 'runs' / 'smoke'}" in out.stderr and "runs_root" in out.stderr
    out = _mvc("study", str(REPO / "params/smoke.yaml"), f"--set=runs_root={tmp_path / 'runs'}",
               f"--set=reports_root={blocker / 'reports'}")
    assert out.returncode == 2 and "reports_root" in out.stderr and "Traceback" not in out.stderr


def test_a_full_disk_gets_one_clear_line(smoke, monkeypatch, capsys):
    def full(*_, **__):
        raise OSError(errno.ENOSPC, "No space left on device", "runs/smoke/images.npy")

    from mvc import pipeline

    monkeypatch.setattr(pipeline, "stage_function", lambda name: full)
    assert cli.main(["data", str(REPO / "params/smoke.yaml"), f"--set=runs_root={smoke.runs_root}"]) == 2
    err = capsys.readouterr().err
    assert "disk full while writing runs/smoke/images.npy" in err and "run again" in err


# ----------------------------------------------------------------------------------------------------------
# damaged outputs


def _captioned(tmp_path):
    cfg = smoke_config(tmp_path)
    run_until(cfg, "caption")
    return cfg


@pytest.mark.parametrize("cut", ["line", "mid-line"])
def test_a_damaged_output_is_named_with_the_fix(tmp_path, cut):
    cfg = _captioned(tmp_path)
    raw = cfg.paths.captions.read_bytes()
    lines = raw.splitlines(keepends=True)
    cfg.paths.captions.write_bytes(b"".join(lines[:-5]) + (lines[-5][:7] if cut == "mid-line" else b""))
    state._verified.clear()  # as a new process would
    with pytest.raises(state.DamagedOutput) as err:
        artifacts.load_captions(cfg)
    assert str(cfg.paths.captions) in str(err.value) and "--force" in str(err.value)
    out = _mvc("caption", str(REPO / "params/smoke.yaml"), *_sets(tmp_path))
    assert out.returncode == 2 and "captions.csv" in out.stderr and "--force" in out.stderr
    fixed = _mvc("caption", str(REPO / "params/smoke.yaml"), *_sets(tmp_path), "--force")
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert cfg.paths.captions.read_bytes() == raw  # recomputed exactly


def test_damage_inside_a_folder_is_named_by_file_and_later_stages_refuse_to_build_on_it(smoke_generated, tmp_path):
    """A PNG overwritten in place with bytes of the same size, and a manifest cut short: each named (file and
    unit folder), and a later stage that was up to date refuses to run over them."""
    import shutil

    from mvc import metrics

    cfg = smoke_config(tmp_path)
    shutil.copytree(smoke_generated.paths.run, cfg.paths.run)  # copy2 keeps the recorded sizes and times
    metrics.image_metrics(cfg, show_progress=False)
    png = sorted((cfg.paths.synthetic / "mvc_coarse").rglob("*.png"))[0]
    original = png.read_bytes()
    raw = bytearray(original)
    raw[-30] ^= 0xFF  # same size, other contents
    png.write_bytes(bytes(raw))
    state._verified.clear()  # as a new process would
    with pytest.raises(state.DamagedOutput) as err:
        metrics.image_metrics(cfg, show_progress=False)  # up to date itself, but built on a damaged set
    assert str(png) in str(err.value) and "stage 'generate'" in str(err.value) and "--force" in str(err.value)
    png.write_bytes(original)
    manifest = cfg.paths.synthetic / "mvc_fine" / "manifest.csv"
    manifest.write_text("".join(manifest.read_text().splitlines(keepends=True)[:-3]))
    state._verified.clear()
    with pytest.raises(state.DamagedOutput) as err:
        artifacts.load_manifests(cfg)
    assert f"{manifest} changed after the stage finished" in str(err.value) and "rows now" in str(err.value)


# ----------------------------------------------------------------------------------------------------------
# interruptions of the study runner


def test_stale_temporaries_are_removed_and_ctrl_c_ends_with_one_line(tmp_path):
    notebooks = tmp_path / "reports" / "smoke" / "notebooks"
    notebooks.mkdir(parents=True)
    stale = notebooks / ".01_data_preparation.ipynb.k3j2.ipynb"
    stale.write_text("{}")
    # Ctrl-C's default action in the child even where the test itself was started with SIGINT ignored (a shell's
    # background job): Python then installs its KeyboardInterrupt handler
    proc = subprocess.Popen([sys.executable, "-m", "mvc", "study", str(REPO / "params/smoke.yaml"), *_sets(tmp_path),
                             "--no-progress"], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (tmp_path / "runs" / "smoke" / "stages" / "data.json").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert not stale.exists()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("mvc study: interrupted")


def test_a_killed_kernel_is_explained(tmp_path, monkeypatch):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("params = ''\noverrides = []", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "01_data_preparation.ipynb")
    monkeypatch.setattr(study, "NOTEBOOKS_DIR", folder)
    with pytest.raises(study.NotebookFailed) as err:
        study.run_notebook("01", REPO / "params/smoke.yaml", [], tmp_path / "out" / "01.ipynb",
                           tmp_path / "progress.json")
    assert "kernel died" in str(err.value) and "memory" in str(err.value) and "batch_size" in str(err.value)
    assert not list((tmp_path / "out").glob("*.ipynb"))  # nothing half-written


def test_a_surrogate_that_cannot_fit_in_memory_is_refused_up_front(tmp_path):
    from mvc.config import load_config
    from mvc.resources import check_memory

    big = load_config(REPO / "params/digits.yaml", ["backbone.resolution=512"])
    with pytest.raises(ValueError, match="backbone.resolution"):
        check_memory(big, available_gb=24)
    out = _mvc("check", str(REPO / "params/digits.yaml"), "--set=backbone.resolution=1024")
    assert out.returncode == 2 and "GB" in out.stderr and "backbone.resolution" in out.stderr
    ok = _mvc("check", str(REPO / "params/digits.yaml"))
    assert ok.returncode == 0 and "estimated peak memory" in ok.stdout


@pytest.mark.parametrize("override, message", [
    ("data.pool_per_class=0", "data.pool_per_class is 0"),
    ("caption.splits=[train]", "add 'pool' to caption.splits"),
])
def test_a_surrogate_without_a_captioned_pool_is_refused_by_check(override, message):
    out = _mvc("check", str(REPO / "params/digits.yaml"), f"--set={override}")
    assert out.returncode == 2 and message in out.stderr
