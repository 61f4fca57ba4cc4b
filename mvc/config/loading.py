"""Reading a study: YAML files with `extends:`, `--set key=value` overrides, and errors that name the field and
the fix."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mvc.config.study import StudyConfig
from mvc.paths import resolve_path


class ConfigError(ValueError):
    """A params file or override that cannot be used; the message names the field and the fix."""



def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class _Loader(yaml.SafeLoader):
    """YAML as people write numbers: `1e-4` is a float (PyYAML alone reads it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if not path.is_file():
        raise ConfigError(f"params file not found: {path} (give a path to a YAML file, e.g. params/digits.yaml)")
    if path in seen:
        raise ConfigError(f"{path}: `extends` forms a cycle: {' -> '.join(map(str, seen + (path,)))}")
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    parent_path = (path.parent / parent) if not Path(parent).is_absolute() else Path(parent)
    return _deep_merge(_read_yaml(parent_path.resolve(), seen + (path,)), raw)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set classify.steps=100")
    key, value = text.split("=", 1)
    if not value.strip():
        return key.strip().split("."), None
    try:
        return key.strip().split("."), yaml.load(value, Loader=_Loader)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"--set {text!r}: the value {value!r} is not valid YAML ({problem}). Lists are written "
                          f"[0, 1, 2]; quote a string that holds brackets or braces, e.g. --set '{key}=\"{value}\"'"
                          ) from None


def _apply_override(tree: dict, keys: list[str], value: Any) -> None:
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {'.'.join(keys)}: {key!r} is not a section")
    node[keys[-1]] = value


def _known_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _explain(err: ValidationError, source: str) -> ConfigError:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        name = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            known = _known_fields(StudyConfig, loc)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"; did you mean '{'.'.join(map(str, loc[:-1] + (close[0],)))}'?" if close else ""
            lines.append(f"unknown key '{name}'{hint} (allowed here: {', '.join(known)})")
        else:
            allowed = ""
            if e["type"] == "literal_error":
                allowed = f" (allowed: {e['ctx']['expected']})"
            got = f"; got {e.get('input')!r}" if loc else ""  # a whole-config check: its message says it all
            lines.append(f"field '{name}': {e['msg']}{got}{allowed}")
    return ConfigError(f"{source}:\n  " + "\n  ".join(lines))


def load_config(params: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> StudyConfig:
    """Read a params file (following `extends:`), apply `key=value` overrides and validate."""
    path = resolve_path(params).resolve()
    tree = _read_yaml(path)
    for text in overrides:
        keys, value = _parse_override(text)
        _apply_override(tree, keys, value)
    tree.setdefault("study", path.stem)
    try:
        return StudyConfig.model_validate(tree)
    except ValidationError as err:
        raise _explain(err, str(path) + (f" with --set {list(overrides)}" if overrides else "")) from None


def with_values(cfg: StudyConfig, values: dict[str, Any]) -> StudyConfig:
    """`cfg` with dotted fields set (`{"finetune.steps": 300}`), validated again."""
    tree = cfg.model_dump(mode="json")
    for dotted, value in values.items():
        _apply_override(tree, dotted.split("."), value)
    try:
        return StudyConfig.model_validate(tree)
    except ValidationError as err:
        raise _explain(err, f"study {cfg.study!r} with {values}") from None


def config_to_yaml(cfg: StudyConfig) -> str:
    """The resolved configuration as YAML (what `mvc check` prints)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
