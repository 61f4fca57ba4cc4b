from __future__ import annotations

import subprocess
import sys

import pytest

from mvc.config import ConfigError, load_config
from tests.conftest import REPO


def test_every_profile_validates():
    for path in sorted((REPO / "params").glob("*.yaml")):
        if path.stem == "paper_base":
            continue
        cfg = load_config(path)
        assert cfg.study == path.stem


def test_extends_and_overrides_are_typed():
    cfg = load_config(REPO / "params/smoke.yaml", ["classify.steps=7", "generate.modes=[fine]",
                                                   "classify.mvc_modes=[fine]",
                                                   "classify.methods=[none,randaugment,mvc]"])
    assert cfg.data.prompt_template == "a photo of the digit {name}"  # from digits.yaml
    assert cfg.data.shots == 4  # smoke's own
    assert cfg.classify.steps == 7 and cfg.generate.modes == ["fine"]


@pytest.mark.parametrize("override, names", [
    ("classify.stepz=3", ["classify.stepz", "did you mean 'classify.steps'"]),
    ("classify.steps=many", ["classify.steps", "many"]),
    ("generate.scheduler=plms", ["generate.scheduler", "plms", "ddim"]),
    ("finetune.mixing.mode=medium", ["finetune.mixing.mode", "coarse+fine"]),
    ("classify.seeds=[0,1", ["--set 'classify.seeds=[0,1'", "not valid YAML"]),
    ("data.prompt_template={name", ["data.prompt_template={name", "not valid YAML", "quote"]),
    ("data.shots=true", ["data.shots", "valid integer"]),
    ("classify.steps=3.5", ["classify.steps", "valid integer"]),
    ("finetune.learning_rate=-1e-4", ["finetune.learning_rate", "greater than 0"]),
    ("classify.lr=0", ["classify.lr", "greater than 0"]),
    ("finetune.lr_warmup_steps=-1", ["finetune.lr_warmup_steps", "greater than or equal to 0"]),
    ("classify.seeds=[]", ["classify.seeds", "at least 1"]),
    ("classify.methods=[]", ["classify.methods", "at least 1"]),
    ("generate.modes=[]", ["generate.modes", "at least 1"]),
    ("data.classes=[]", ["data.classes", "at least 2"]),
    ("study=..", ["study", "letters, digits"]),
    ("study=.", ["study", "letters, digits"]),
    ("study=a/b", ["study", "letters, digits"]),
    ("finetune.mixing.include_anchor=false", ["finetune.mixing.include_anchor", "unknown key"]),
    ("generate.mixing.mode=fine", ["generate.mixing.mode", "unknown key"]),
    ("generate.modes=[fine]", ["classify.methods has mvc_nomix", "add none to generate.modes"]),
    ("generate.sets=[sd_img2img, sd_finetuned, mvc_nomix_trained]", ["sd_naive", "add sd_naive to generate.sets"]),
    ("generate.sets=[sd_naive, toy]", ["generate.sets", "not registered", "sd_img2img"]),
    ("classify.methods=[none, auto_augment]", ["classify.methods", "'auto_augment'", "not registered", "autoaugment"]),
])
def test_config_errors_name_the_field(override, names):
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "params/smoke.yaml", [override])
    for text in names:
        assert text in str(err.value)


@pytest.mark.parametrize("overrides, names", [
    (["classify.evaluate_on=val", "data.val_per_class=0"], ["classify.evaluate_on: val", "data.val_per_class is 0"]),
    (["curve_methods=[none, mvc]"], ["curve_methods is set", "one level"]),
    (["data.shots=[1, 2]", "curve_methods=[]"], ["curve_methods is empty", "[1, 2]"]),
])
def test_designs_that_cannot_run_are_refused_before_any_work(overrides, names):
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "params/smoke.yaml", overrides)
    for text in names:
        assert text in str(err.value)


def test_misspelt_key_in_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"extends: {REPO / 'params/smoke.yaml'}\ngenerate:\n  guidance_txt: 2\n")
    out = subprocess.run([sys.executable, "-m", "mvc", "check", str(bad)], capture_output=True, text=True)
    assert out.returncode != 0
    assert "generate.guidance_txt" in out.stderr and "guidance_text" in out.stderr
    ok = subprocess.run([sys.executable, "-m", "mvc", "check", str(REPO / "params/digits.yaml")], capture_output=True,
                        text=True)
    assert ok.returncode == 0 and "guidance_text: 7.5" in ok.stdout


def test_stage_hashes_are_stable_and_flow_downstream():
    base = load_config(REPO / "params/smoke.yaml")
    again = load_config(REPO / "params/smoke.yaml")
    assert base.stage_hash("classify") == again.stage_hash("classify")
    changed = load_config(REPO / "params/smoke.yaml", ["generate.steps=3"])
    assert changed.stage_hash("finetune") == base.stage_hash("finetune")
    for stage in ("generate", "metrics", "classify", "report"):
        assert changed.stage_hash(stage) != base.stage_hash(stage)
    only_classify = load_config(REPO / "params/smoke.yaml", ["classify.lr=0.01"])
    assert only_classify.stage_hash("generate") == base.stage_hash("generate")
    assert only_classify.stage_hash("classify") != base.stage_hash("classify")


def test_numbers_in_exponent_form_are_floats():
    cfg = load_config(REPO / "params/smoke.yaml", ["finetune.learning_rate=1e-4", "classify.lr=3E-3"])
    assert cfg.finetune.learning_rate == 1e-4 and cfg.classify.lr == 3e-3


def test_a_bare_no_is_the_string_no():
    """YAML reads `no` as false; `--set finetune.mixed_precision=no` means the setting 'no'."""
    assert load_config(REPO / "params/paper_base.yaml",
                       ["finetune.mixed_precision=no"]).finetune.mixed_precision == "no"
    with pytest.raises(ConfigError, match="finetune.mixed_precision"):
        load_config(REPO / "params/smoke.yaml", ["finetune.mixed_precision=true"])


def test_a_bad_study_name_touches_nothing(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mvc", "study", str(REPO / "params/smoke.yaml"), "--set=study=..",
                          f"--set=runs_root={tmp_path / 'runs'}", f"--set=reports_root={tmp_path / 'reports'}"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "study name '..'" in out.stderr
    assert not list(tmp_path.iterdir())


def test_a_retired_spelling_is_an_unknown_field():
    """The switches before `generate.sets` (0.x, no users to keep) are unknown fields, named in the error."""
    with pytest.raises(ConfigError, match="generate.naive"):
        load_config(REPO / "params/digits.yaml", ["generate.naive=false"])
