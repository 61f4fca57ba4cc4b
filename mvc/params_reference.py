"""The parameter reference, generated from the schema (`mvc.config`): every field of a params file with its type,
its default and the comment written beside it in the schema, so the reference cannot drift from the code.
`mvc params` prints it; `docs/params.md` is its committed copy (a test keeps the two equal)."""

from __future__ import annotations

import ast
import inspect
import io
import textwrap
import tokenize
from dataclasses import dataclass

from pydantic import BaseModel

from mvc.config import StudyConfig

HEADER = """# Parameter reference

Every field of a params file (`params/*.yaml`), with its type, its default and what it means, generated from the
schema in `mvc/config/` by `mvc params > docs/params.md` (a test fails when this file and the schema differ).
A params file names only what it changes; `extends:` reads another first, and `--set key=value` overrides any field
on the command line. `mvc check PARAMS` prints a study's resolved values. The method behind the fields:
[`method.md`](method.md).
"""


@dataclass(frozen=True)
class FieldDoc:
    """One field of the reference: its dotted name, type and default as written, and its comment."""

    name: str
    annotation: str
    default: str
    comment: str


def _comments(source: str) -> dict[int, tuple[str, bool]]:
    """Comment text per line of `source`, and whether the comment is the line's only content."""
    out: dict[int, tuple[str, bool]] = {}
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            alone = not lines[row - 1][:col].strip()
            out[row] = (tok.string.lstrip("#").strip(), alone)
    return out


def _default(model: type[BaseModel], name: str) -> str:
    field = model.model_fields[name]
    if field.default_factory is not None or isinstance(field.default, BaseModel):
        return ""
    value = field.default
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"' if value == "" else value
    return repr(value).replace("'", "")


def _declarations(model: type[BaseModel]):
    """Each annotated field declaration of `model` and of the sections it extends (base classes first), with its
    class's source and comments."""
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls.__module__.startswith("pydantic"):
            continue
        source = textwrap.dedent(inspect.getsource(cls))
        comments = _comments(source)
        for node in ast.parse(source).body[0].body:
            yield node, source, comments


def section_fields(model: type[BaseModel], prefix: str = "") -> list[FieldDoc]:
    """The fields of `model` (a schema section) in the order written, nested sections after their parent's own."""
    own, nested = [], []
    for node, source, comments in _declarations(model):
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        name = node.target.id
        if name not in model.model_fields:
            continue
        annotation = model.model_fields[name].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested.append((name, annotation))
            continue
        above, row = [], node.lineno - 1
        while row in comments and comments[row][1]:
            above.insert(0, comments[row][0])
            row -= 1
        beside = [comments[r][0] for r in range(node.lineno, node.end_lineno + 1) if r in comments
                  and not comments[r][1]]
        text = " ".join(above + beside)
        own.append(FieldDoc(prefix + name, ast.get_source_segment(source, node.annotation) or "",
                            _default(model, name), text))
    for name, sub in nested:
        own += section_fields(sub, f"{prefix}{name}.")
    return own


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _section_doc(model: type[BaseModel]) -> str:
    doc = inspect.getdoc(model) or ""
    return "" if doc == inspect.getdoc(BaseModel) or not doc else " ".join(doc.split())


def reference() -> str:
    """The whole reference as Markdown: the top-level fields, then one table per section of `StudyConfig`."""
    parts = [HEADER]
    top = [f for f in section_fields(StudyConfig) if "." not in f.name]
    groups: dict[str, list[FieldDoc]] = {"(top level)": top}
    for name, info in StudyConfig.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            groups[name] = section_fields(info.annotation, f"{name}.")
    for group, fields in groups.items():
        parts.append(f"## {group}\n")
        model = StudyConfig.model_fields[group].annotation if group in StudyConfig.model_fields else None
        doc = _section_doc(model) if model is not None else ""
        if doc:
            parts.append(doc + "\n")
        rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
        rows += [f"| `{f.name}` | `{_cell(f.annotation)}` | {('`' + _cell(f.default) + '`') if f.default else ''} | "
                 f"{_cell(f.comment)} |" for f in fields]
        parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)
