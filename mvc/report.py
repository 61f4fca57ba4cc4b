"""Stage `report`: the paper's figures and tables for one study and `reports/<study>/index.html`, which reads
like a results section: the headline (main accuracy table and Figure 1), the method's figures, ablations and
tests, image metrics, then diagnostics.

What the report holds is `mvc.report_items.REPORT_ITEMS`; its sentences are `mvc.report_text`'s. The page is
`templates/report.html.j2`; the folders `figures/` and `tables/` are written whole on every run, so nothing stale
stays beside the new files. `mvc report --all` (`report_all`) puts every study's main table side by side.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path

import jinja2
import matplotlib.pyplot as plt
import pandas as pd

from mvc import figures
from mvc.artifacts import report_index
from mvc.config import StudyConfig, config_to_yaml
from mvc.io import write_text
from mvc.paths import REPO_ROOT
from mvc.registry import report_order
from mvc.report_items import ITEM, REPORT_ITEMS, SECTIONS, ReportInputs, item_path, numbered_items
from mvc.report_text import backbone_sentence, format_caption, headline_warnings, oracle_reading, primary_reading
from mvc.stages import notebook_stages
from mvc.state import stage, stage_info
from mvc.units import Unit

TEMPLATE = Path(__file__).with_name("templates") / "report.html.j2"


# ----------------------------------------------------------------------------------------------------------
# writing


def write_table(frame: pd.DataFrame, folder: Path, name: str, caption: str = "") -> dict[str, Path]:
    """`name.csv`, `name.md` and `name.tex` (booktabs) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {"csv": folder / f"{name}.csv", "md": folder / f"{name}.md", "tex": folder / f"{name}.tex"}
    write_text(out["csv"], frame.to_csv(index=False))
    write_text(out["md"], (f"{caption}\n\n" if caption else "") + frame.to_markdown(index=False) + "\n")
    latex = frame.style.hide(axis="index").format(precision=2).to_latex(hrules=True, caption=caption or None)
    write_text(out["tex"], latex)
    return out


def write_items(cfg: StudyConfig) -> list[str]:
    """Build every item of `REPORT_ITEMS` the study has and write it (tables as CSV, Markdown and LaTeX with
    their numbered caption; figures as PNG and PDF), into emptied `figures/` and `tables/` folders."""
    for folder in (cfg.paths.figures, cfg.paths.tables):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    inputs, counts, written = ReportInputs(cfg), {"figure": 0, "table": 0}, []
    for item in REPORT_ITEMS:
        built = item.build(inputs)
        if built is None:
            continue
        counts[item.kind] += 1
        label = f"{item.kind.title()} {counts[item.kind]}"
        if item.kind == "table":
            write_table(built, cfg.paths.tables, item.key, f"{label}: {format_caption(item.caption, cfg)}")
        elif isinstance(built, Path):  # a PNG a stage drew
            shutil.copyfile(built, item_path(cfg, item))
        else:
            figures.save(built, item_path(cfg, item))
            plt.close(built)
        written.append(item.key)
    return written


def summary(cfg: StudyConfig, notebook: str) -> pd.DataFrame:
    """What a notebook's stages did, from their records: time, steps, final loss, device, counts (not the
    digests of their outputs, which are for the up-to-date check)."""
    rows = []
    for name in notebook_stages(notebook):
        info = stage_info(cfg, name)
        for key, value in info.items():
            if key in ("stage", "hash", "finished", "outputs", "checks"):
                continue
            rows.append({"stage": name, "quantity": key,
                         "value": json.dumps(value) if isinstance(value, dict) else value})
    return pd.DataFrame(rows, columns=["stage", "quantity", "value"])


# ----------------------------------------------------------------------------------------------------------
# index.html


def render_notebooks(cfg: StudyConfig) -> list[Path]:
    """Executed notebooks as standalone HTML beside them."""
    from nbconvert import HTMLExporter  # deferred: nbconvert is slow to import and only the report needs it

    out = []
    exporter = HTMLExporter()
    for nb in sorted(cfg.paths.executed_notebooks.glob("[0-9]*.ipynb")):
        body, _ = exporter.from_filename(str(nb))
        target = nb.with_suffix(".html")
        write_text(target, body)
        out.append(target)
    return out


def readings(cfg: StudyConfig) -> list[tuple[str, str]]:
    """The report's readings in words, each (title, text): the primary contrast's (`primary_reading`) and the
    oracle controls' (`oracle_reading`), where they ran."""
    inputs = ReportInputs(cfg)
    said = [("The primary contrast.", primary_reading(inputs.primary)),
            ("What the oracle controls say.", oracle_reading(inputs.oracles))]
    return [(title, text) for title, text in said if text]


def study_commands(prov: dict) -> tuple[str, str]:
    """(the command that made the study, the command that rebuilds its report from the finished runs/), from its
    provenance (params file, overrides, git revision)."""
    params = prov.get("params_file", "PARAMS") + "".join(f" --set {o}" for o in prov.get("overrides", []))
    revision = prov.get("git_revision", "")[:7]
    return f"mvc study {params}" + (f" (at git {revision})" if revision else ""), f"mvc report {params} --force"


def write_index(cfg: StudyConfig, said: list[tuple[str, str]] | None = None) -> Path:
    """`reports/<study>/index.html` from `templates/report.html.j2`: the items in the registry's order, each with
    its file and the commands that make it (`study_commands`), then the notebooks, the resolved params and the
    provenance; `said`: the readings (`readings`, computed when not given)."""
    paths = cfg.paths
    notebooks = render_notebooks(cfg)
    sections: dict[str, list[dict]] = {s: [] for s in SECTIONS}
    for item, label, caption in numbered_items(cfg):
        entry = {"key": item.key, "kind": item.kind, "label": label, "caption": caption}
        path = item_path(cfg, item)
        if item.kind == "table":
            entry["html"] = pd.read_csv(path).to_html(index=False, border=0, na_rep="")
        else:
            entry["png"] = base64.b64encode(path.read_bytes()).decode()
        entry["file"] = str(path.relative_to(paths.report))
        sections[item.section].append(entry)
    prov = json.loads(paths.provenance.read_text()) if paths.provenance.exists() else {}
    made_by, rebuilt_by = study_commands(prov)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE.parent), autoescape=True)
    page = env.get_template(TEMPLATE.name).render(
        study=cfg.study, dataset=cfg.data.dataset, backbone_kind=cfg.backbone.kind,
        backbone_name=cfg.backbone.model if cfg.backbone.kind == "pretrained" else "surrogate",
        classifier=cfg.classify.backbone, backbone_sentence=backbone_sentence(cfg),
        generated=time.strftime("%Y-%m-%d %H:%M"), sections=[(s, e) for s, e in sections.items() if e],
        warnings=headline_warnings(cfg),
        readings=readings(cfg) if said is None else said,
        notebooks=notebooks, params=config_to_yaml(cfg), provenance=json.dumps(prov, indent=2),
        made_by=made_by, rebuilt_by=rebuilt_by)
    write_text(paths.index, page)
    return paths.index


@stage("report", reader=report_index)
def build_report(cfg: StudyConfig, show_progress: bool = True) -> dict:
    """Figures, tables and index.html for one study."""
    written = write_items(cfg)
    if cfg.paths.results.exists():  # the per-seed runs, so that anyone can recompute every table from them
        shutil.copyfile(cfg.paths.results, cfg.paths.report / "results.csv")
    said = readings(cfg)
    write_index(cfg, said)
    return {"figures": sum(ITEM[k].kind == "figure" for k in written),
            "tables": sum(ITEM[k].kind == "table" for k in written),
            "warnings": headline_warnings(cfg), "readings": dict(said)}


def _largest_level(study_report: Path) -> str:
    """The shots level a study's main table is at, from its provenance ("?" when it has none)."""
    prov = study_report / "provenance.json"
    if not prov.exists():
        return "?"
    shots = json.loads(prov.read_text()).get("params", {}).get("data", {}).get("shots")
    return Unit(max(shots) if isinstance(shots, list) else shots).label


def report_all(reports_root: Path | None = None) -> str:
    """`mvc report --all`: the classification table of every study under `reports_root`, a column per study named
    with the shots level its table is at ("not run" where a study lacks a method), and the few-shot curves of the
    studies that have one, a row per study, level and method; as Markdown, and under `<root>/_all/tables/`."""
    root = reports_root or REPO_ROOT / "reports"
    frames, curves = [], []
    for table in sorted(root.glob("*/tables/classification.csv")):
        study = table.parent.parent
        if study.name.startswith("_"):
            continue
        t = pd.read_csv(table)
        t["study"] = f"{study.name} ({_largest_level(study)} shots)"
        frames.append(t)
        if (table.parent / "few_shot.csv").exists():
            curves.append(pd.read_csv(table.parent / "few_shot.csv").assign(study=study.name))
    if not frames:
        raise FileNotFoundError(f"no study has a classification table under {root}/*/tables/; "
                                "run `mvc study PARAMS` first")
    allt = pd.concat(frames)
    allt["cell"] = allt["top1"].map("{:.2f}".format) + " ± " + allt["ci95"].map("{:.2f}".format)
    wide = allt.pivot_table(index="method", columns="study", values="cell", aggfunc="first").fillna("not run")
    wide = wide.reindex(report_order(wide.index)).reset_index()
    write_table(wide, root / "_all" / "tables", "classification_all_studies",
                "Top-1 accuracy (%), mean ± 95% interval as each study's Table 1 gives it, at the shots level in each "
                "column's name; not run: a method the study did not run")
    text = wide.to_markdown(index=False)
    if curves:
        few = pd.concat(curves)
        few["cell"] = few["top1"].map("{:.2f}".format) + " ± " + few["ci95"].map("{:.2f}".format)
        few = few.pivot_table(index=["study", "shots"], columns="method", values="cell", aggfunc="first")
        few = few[report_order(few.columns)].fillna("not run").reset_index()
        write_table(few, root / "_all" / "tables", "few_shot_all_studies",
                    "Top-1 accuracy (%) per study and shots level (the studies with a few-shot curve)")
        text += "\n\n" + few.to_markdown(index=False)
    return text
