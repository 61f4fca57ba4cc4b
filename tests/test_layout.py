"""The package's shape: no import cycle, one stage registry whose declared reads match what the stages read."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
from pydantic import BaseModel

from mvc import stages
from mvc.config import load_config
from mvc.stages import LOCATION_FIELDS, STAGES, TOOL_SECTIONS, downstream, reads_field, stage_hash, upstream
from tests.conftest import REPO, run_until, smoke_config, stage_functions

PACKAGE = REPO / "mvc"


def _type_only(tree: ast.Module) -> set[int]:
    """The ids of the nodes under `if TYPE_CHECKING:` (imports for annotations, never run)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def _module(path: Path) -> str:
    """The dotted name of a module file of the package (a subpackage by its own name)."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    """Every module of the package, its subpackages' included, by dotted name."""
    return {_module(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    """Every mvc module `path` imports when it runs, at module level or inside functions (not those under
    `if TYPE_CHECKING:`, which only annotations read)."""
    found = set()
    tree = ast.parse(path.read_text())
    skip = _type_only(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mvc":
            if node.module == "mvc":
                found.update(f"mvc.{a.name}" for a in node.names
                             if (PACKAGE / f"{a.name}.py").exists() or (PACKAGE / a.name / "__init__.py").exists())
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mvc."))
    return found


def test_the_package_has_no_import_cycle():
    graph = {name: _imports(p) - {name} for name, p in _modules().items() if name != "mvc"}
    graph = {k: {m for m in v if m in graph} for k, v in graph.items()}
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


RUNNERS = {"mvc.pipeline", "mvc.select", "mvc.study", "mvc.cli", "mvc.__main__", "mvc.notebook", "mvc.inside"}


def test_stages_sit_on_one_floor():
    """No stage module imports another (they read each other's outputs through `mvc.artifacts`), and no library
    module imports a stage: only the runners (pipeline, select, study, cli, the notebooks' helpers and `inside`) sit
    above them."""
    from mvc.pipeline import stage_functions as registry_functions

    stage_modules = {fn.__wrapped__.__module__ if hasattr(fn, "__wrapped__") else fn.__module__
                     for fn in registry_functions().values()}
    assert {"mvc.data", "mvc.classify", "mvc.report", "mvc.metrics", "mvc.backbone"} <= stage_modules
    graph = {name: _imports(p) - {name} for name, p in _modules().items()}
    crossing = {m: sorted(graph[m] & stage_modules) for m in stage_modules if graph[m] & stage_modules}
    assert not crossing, f"stage modules importing other stages: {crossing}"
    library = set(graph) - stage_modules - RUNNERS
    upward = {m: sorted(graph[m] & stage_modules) for m in library if graph[m] & stage_modules}
    assert not upward, f"library modules importing stage modules: {upward}"


def test_every_stage_has_its_function_and_notebook():
    from mvc.pipeline import stage_function

    for s in STAGES:
        assert callable(stage_function(s.name)) and stage_function(s.name).stage_name == s.name
        assert (REPO / "notebooks" / stages.NOTEBOOKS[s.notebook]).exists()
        assert all(a in [t.name for t in STAGES[: STAGES.index(s)]] for a in s.after), f"{s.name}: run order"


def test_each_fine_tuned_model_has_its_stage_and_is_sampled_before_generation():
    from mvc.registry import MODELS, SETS

    for model in MODELS.values():
        assert model.stage in stages.STAGE and model.stage in stages.STAGE["generate"].after
    assert {s.model for s in SETS.values()} <= set(MODELS) | {"backbone"}


def test_the_stage_functions_are_imported_by_name_not_by_string():
    """The graph the cycle test reads is the graph that runs: no module loads a stage by a dotted string."""
    for name, path in _modules().items():
        assert "import_module" not in path.read_text(), name


def test_the_tests_run_until_calls_the_registrys_functions():
    from mvc.pipeline import stage_functions as registry_functions

    assert stage_functions() == registry_functions()
    with pytest.raises(ValueError, match="no stage 'train'"):
        run_until(None, "train")


def _leaves(model: BaseModel, prefix: str = "") -> list[str]:
    out = []
    for name in type(model).model_fields:
        value, path = getattr(model, name), f"{prefix}{name}"
        out += _leaves(value, path + ".") if isinstance(value, BaseModel) else [path]
    return out


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return value + value[:1] if value else ["x"]
    if isinstance(value, dict):
        return {**value, "x": "y"}
    return "x" if value is None else None


def test_every_field_changes_exactly_the_stages_that_read_it_and_those_after():
    cfg = load_config(REPO / "params/digits.yaml")
    base = cfg.model_dump(mode="json")
    before = {s.name: stage_hash(base, s.name) for s in STAGES}
    for field in _leaves(cfg):
        dump = copy.deepcopy(base)
        node = dump
        *parents, last = field.split(".")
        for part in parents:
            node = node[part]
        node[last] = _changed(node[last])
        changed = {s.name for s in STAGES if stage_hash(dump, s.name) != before[s.name]}
        readers = {s.name for s in STAGES if reads_field(s, field)}
        expected = readers | {d for r in readers for d in downstream(r)}
        if field in LOCATION_FIELDS or field.split(".")[0] in TOOL_SECTIONS:
            assert not changed, f"{field} says where a study runs or what a command tries; it must be in no hash"
            continue
        assert readers, f"params field {field} is read by no stage: declare it in mvc/stages.py or remove it"
        assert changed == expected, f"{field}: changed {sorted(changed)}, expected {sorted(expected)}"


class _Recorder:
    """Stands in for a StudyConfig and notes every params field the code reads through it."""

    # where a study lives, and the unit views (shots level x replicate: data.shots, replicates and the seeds,
    # which every stage from fine-tuning on declares or follows); reads through a unit view are recorded too
    ROOT_ALLOWED = {"paths", "stage_hash", "shots_now", "replicate", "unit_name", "current_unit"}

    def __init__(self, obj, prefix: str, seen: set[str]):
        self._obj, self._prefix, self._seen = obj, prefix, seen

    def __getattr__(self, name):
        value = getattr(self._obj, name)
        path = f"{self._prefix}{name}"
        if self._prefix == "" and name == "units":
            return lambda: [_Recorder(u, "", self._seen) for u in value()]
        if self._prefix == "" and name == "unit":
            return lambda *args: _Recorder(value(*args), "", self._seen)
        if name in type(self._obj).model_fields:
            if isinstance(value, BaseModel):
                return _Recorder(value, path + ".", self._seen)
            self._seen.add(path)
        elif not (self._prefix == "" and name in self.ROOT_ALLOWED):
            self._seen.add(self._prefix.rstrip(".") or "*")  # a whole section used (model_copy, model_dump)
        return value


@pytest.mark.slow
def test_each_stage_reads_only_what_it_declares(smoke_generated, tmp_path):
    """Every stage, rerun on the smoke study through a recording stand-in of its config: each field it reads is
    declared by it or by a stage before it (whose hash it includes)."""
    import shutil

    cfg = smoke_config(tmp_path)
    shutil.copytree(smoke_generated.paths.run, cfg.paths.run)
    for spec in STAGES:
        (cfg.paths.stages / f"{spec.name}.json").unlink(missing_ok=True)
        seen: set[str] = set()
        stage_functions()[spec.name](_Recorder(cfg, "", seen), show_progress=False)
        covering = [spec] + [s for s in STAGES if s.name in upstream(spec.name)]
        if "*" in seen:  # the whole config was read (the report prints it): all of it must be covered
            seen = (seen - {"*"}) | set(_leaves(cfg))
        undeclared = sorted(f for f in seen if f not in LOCATION_FIELDS and f.split(".")[0] not in TOOL_SECTIONS
                            and not any(reads_field(s, f) for s in covering))
        assert not undeclared, f"stage {spec.name} reads {undeclared} without declaring it in mvc/stages.py"


def test_no_module_is_over_400_lines():
    """One job per module: a module that outgrows 400 lines is doing two."""
    long = {name: n for name, p in _modules().items() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines: {long}"
