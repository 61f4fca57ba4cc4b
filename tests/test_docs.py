"""The documentation cannot drift from what it describes: the parameter reference is the schema's, every field has a
meaning, the README stays short, its links and the docs' point to tracked files, and the notebooks' prose lists of
methods and synthetic sets are the default study's."""

import re
import subprocess
from pathlib import Path

import jupytext

from mvc import artifacts, registry
from mvc.config import StudyConfig, load_config
from mvc.params_reference import reference, section_fields

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_parameter_reference_is_the_schemas():
    stale = "docs/params.md is stale: run `mvc params > docs/params.md`"
    assert (REPO / "docs/params.md").read_text() == reference(), stale


def test_every_field_has_a_meaning_and_appears_in_the_reference():
    fields = section_fields(StudyConfig)
    undocumented = [f.name for f in fields if not f.comment]
    assert not undocumented, f"fields without a comment in the schema (mvc/config/): {undocumented}"
    text = reference()
    for name in ("data.shots", "backbone.surrogate.text_encoder", "finetune.mixing.mode", "generate.mixing.k",
                 "classify.p_synthetic", "select.run_first", "replicates"):
        assert f"| `{name}` |" in text
    assert len(fields) > 150  # nested sections (backbone.surrogate, the two mixing sections) are walked


def test_the_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 220


def _tracked() -> set[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True)
    return set(out.stdout.splitlines())


def test_links_point_to_tracked_files():
    tracked = _tracked()
    folders = {str(Path(f).parent) for f in tracked}
    broken = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in LINK.findall(doc.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            rel = (doc.parent / target).resolve().relative_to(REPO).as_posix()
            if rel not in tracked and rel.rstrip("/") not in folders:
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
    assert not broken, f"links to files git does not track: {broken}"


def _markdown(notebook: str) -> str:
    nb = jupytext.read(REPO / "notebooks" / notebook)
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def _named(text: str, vocabulary: set[str]) -> set[str]:
    return {w for w in re.findall(r"`([a-z0-9_]+)`", text) if w in vocabulary}


def test_the_notebooks_prose_lists_what_the_default_study_runs():
    cfg = load_config(REPO / "params/digits.yaml")
    intro = _markdown("05_classification.py").split("\n## ")[0]
    assert _named(intro, set(registry.METHODS)) == set(cfg.classify.methods)
    intro = _markdown("04_generation.py").split("\n## ")[0]
    sets = set(registry.SETS) | {f"mvc_{m}" for m in ("coarse", "fine", "none")}
    assert _named(intro, sets) == set(artifacts.synthetic_set_names(cfg.generate))
