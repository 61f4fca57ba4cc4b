"""Tables (CSV, Markdown, LaTeX), the paper's figures and the self-contained `reports/<study>/index.html`."""

from __future__ import annotations

import base64
import html
import json
import logging
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from mvc import state  # noqa: E402
from mvc.config import StudyConfig  # noqa: E402
from mvc.io import write_text  # noqa: E402
from mvc.paths import REPO_ROOT  # noqa: E402
from mvc.plots import save  # noqa: E402

log = logging.getLogger(__name__)

METHOD_ORDER = ["none", "autoaugment", "randaugment", "trivialaugment", "mixup", "cutmix", "sd_naive", "mvc",
                "mvc_two_phase", "mvc_randaugment"]
MVC_METHODS = {"mvc", "mvc_two_phase", "mvc_randaugment"}


# ----------------------------------------------------------------------------------------------------------
# Statistics


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its t-based confidence interval (0 for a single value)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), 0.0
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(half)


def accuracy_table(results: pd.DataFrame, variant: str = "main") -> pd.DataFrame:
    """Per method: seeds, top-1 mean and 95% CI (in %), top-5 mean."""
    rows = []
    sub = results[results["variant"] == variant]
    for method in sorted(sub["method"].unique(), key=lambda m: (METHOD_ORDER + [m]).index(m)):
        r = sub[sub["method"] == method]
        m1, h1 = mean_ci(r["top1"] * 100)
        rows.append({"method": method, "seeds": len(r), "top1": round(m1, 2), "ci95": round(h1, 2),
                     "top5": round(float(r["top5"].mean() * 100), 2)})
    return pd.DataFrame(rows)


def paired_difference(results: pd.DataFrame, method: str = "mvc") -> dict:
    """`method` minus the best non-MVC method (by mean top-1), paired over seeds, with a paired t-test."""
    main = results[results["variant"] == "main"]
    others = main[~main["method"].isin(MVC_METHODS)]
    if others.empty or method not in set(main["method"]):
        return {}
    best = others.groupby("method")["top1"].mean().idxmax()
    a = main[main["method"] == method].set_index("seed")["top1"]
    b = main[main["method"] == best].set_index("seed")["top1"]
    seeds = a.index.intersection(b.index)
    diff = (a.loc[seeds] - b.loc[seeds]) * 100
    m, h = mean_ci(diff.to_numpy())
    p = float(stats.ttest_rel(a.loc[seeds], b.loc[seeds]).pvalue) if len(seeds) > 1 and diff.std() > 0 else float("nan")
    return {"method": method, "baseline": best, "seeds": len(seeds), "difference": round(m, 2), "ci95": round(h, 2),
            "p_value": round(p, 4) if p == p else p}


def ablation_table(results: pd.DataFrame) -> pd.DataFrame:
    """MVC under each ablation variant, beside the main MVC and two-phase rows (same seeds)."""
    ab = results[results["variant"] != "main"]
    if ab.empty:
        return pd.DataFrame(columns=["setting", "seeds", "top1", "ci95"])
    seeds = set(ab["seed"])
    main = results[(results["variant"] == "main") & results["method"].isin(["mvc", "mvc_two_phase"]) & results["seed"].isin(seeds)]
    rows = []
    for (variant, method), r in pd.concat([main, ab]).groupby(["variant", "method"], sort=False):
        m, h = mean_ci(r["top1"] * 100)
        label = "two-phase (main)" if method == "mvc_two_phase" else ("one-phase (main)" if variant == "main" else variant)
        rows.append({"setting": label, "seeds": len(r), "top1": round(m, 2), "ci95": round(h, 2)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------------
# Writing


def write_table(frame: pd.DataFrame, folder: Path, name: str, caption: str = "") -> dict[str, Path]:
    """`name.csv`, `name.md` and `name.tex` (booktabs) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {"csv": folder / f"{name}.csv", "md": folder / f"{name}.md", "tex": folder / f"{name}.tex"}
    write_text(out["csv"], frame.to_csv(index=False))
    write_text(out["md"], (f"{caption}\n\n" if caption else "") + frame.to_markdown(index=False) + "\n")
    latex = frame.style.hide(axis="index").format(precision=2).to_latex(hrules=True, caption=caption or None)
    write_text(out["tex"], latex)
    return out


def accuracy_bars(table: pd.DataFrame) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    colors = ["#e69138" if m in MVC_METHODS else "#6fa8dc" for m in table["method"]]
    ax.bar(table["method"], table["top1"], yerr=table["ci95"], color=colors, capsize=3)
    lo = max(0.0, float((table["top1"] - table["ci95"]).min()) - 5)
    ax.set_ylim(lo, min(100.0, float((table["top1"] + table["ci95"]).max()) + 2))
    ax.set_ylabel("top-1 accuracy (%)")
    ax.tick_params(axis="x", rotation=40)
    fig.tight_layout()
    return fig


def _synthetic_sets(cfg: StudyConfig, sources: list[int]) -> dict:
    from mvc.generate import generators, load_synthetic

    return {n: load_synthetic(cfg, n, cfg.backbone.resolution, sources) for n in generators(cfg.generate)}


def make_figures(cfg: StudyConfig) -> dict[str, Path]:
    """Figures 1-5 of the paper for this study, as PNG and PDF under `reports/<study>/figures/`."""
    from mvc import figures
    from mvc.data import load_splits
    from mvc.models import diffusion_images, tensor_to_images

    splits = load_splits(cfg)
    train = splits[splits["split"] == "train"]
    shown = train[train["label"].isin(sorted(train["label"].unique())[: cfg.report.classes_in_figures])]
    sources = shown.groupby("label")["image_id"].first().tolist()
    # only the images the figures show: a few per class, and what was generated from one source per class
    real_ids = shown.groupby("label").head(3)["image_id"].to_numpy()
    real = dict(zip(real_ids, tensor_to_images(diffusion_images(cfg, real_ids))))
    synthetic = _synthetic_sets(cfg, sources)
    fig_dir, out = cfg.paths.figures, {}
    for name, fig in [
        ("figure1_real_naive_mvc", figures.figure1(cfg, real, splits, synthetic)),
        ("figure2_coarse_fine", figures.figure2(cfg, real, sources[:3], synthetic)),
        ("figure3_training_pipeline", figures.pipeline_diagram(cfg, "training")),
        ("figure4_generation_pipeline", figures.pipeline_diagram(cfg, "generation")),
        ("figure5_real_mvc_naive", figures.figure5(cfg, real, sources, synthetic)),
    ]:
        out[name] = save(fig, fig_dir / f"{name}.png")
        plt.close(fig)
    return out


def make_tables(cfg: StudyConfig) -> dict[str, pd.DataFrame]:
    from mvc.classify import load_results
    from mvc.metrics import load_image_metrics

    results = load_results(cfg)
    tables = {"classification": accuracy_table(results), "ablation": ablation_table(results),
              "paired_difference": pd.DataFrame([d for m in ("mvc", "mvc_two_phase") if (d := paired_difference(results, m))]),
              "image_metrics": load_image_metrics(cfg).round(4)}
    captions = {"classification": f"{cfg.study}: top-1 accuracy (%), mean and 95% CI over seeds, {cfg.classify.backbone}, "
                                  f"{cfg.classify.steps} steps, {cfg.data.shots} shots per class",
                "ablation": f"{cfg.study}: MVC ablations (mixing mode, M, p_synthetic, one- vs two-phase)",
                "paired_difference": f"{cfg.study}: MVC minus the best non-MVC method, paired over seeds",
                "image_metrics": f"{cfg.study}: distance to real test images, label fidelity, diversity"}
    for name, frame in tables.items():
        write_table(frame, cfg.paths.tables, name, captions[name])
    fig = accuracy_bars(tables["classification"])
    save(fig, cfg.paths.figures / "classification_bars.png")
    plt.close(fig)
    return tables


def render_notebooks(cfg: StudyConfig) -> list[Path]:
    """Executed notebooks as standalone HTML beside them."""
    from nbconvert import HTMLExporter

    out = []
    exporter = HTMLExporter()
    for nb in sorted(cfg.paths.executed_notebooks.glob("[0-9]*.ipynb")):
        body, _ = exporter.from_filename(str(nb))
        target = nb.with_suffix(".html")
        write_text(target, body)
        out.append(target)
    return out


def _img_tag(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{path.stem}"><figcaption>{path.stem}</figcaption></figure>'


def write_index(cfg: StudyConfig) -> Path:
    """`reports/<study>/index.html`: every figure (embedded), every table, params, provenance, notebook links."""
    from mvc.config import config_to_yaml

    paths = cfg.paths
    notebooks = render_notebooks(cfg)
    tables = "".join(f"<h3>{html.escape(p.stem)}</h3>" + pd.read_csv(p).to_html(index=False, border=0, na_rep="")
                     for p in sorted(paths.tables.glob("*.csv")))
    figures = "".join(_img_tag(p) for p in sorted(paths.figures.glob("*.png")))
    prov = json.loads(paths.provenance.read_text()) if paths.provenance.exists() else {}
    links = "".join(f'<li><a href="notebooks/{p.name}">{p.stem}</a></li>' for p in notebooks)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>MVC study: {html.escape(cfg.study)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;margin:0.5em 0}}td,th{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}}
figure{{display:inline-block;margin:0.5em}}img{{max-width:100%}}pre{{background:#f6f6f6;padding:0.5em;overflow:auto;font-size:12px}}</style>
</head><body>
<h1>Mixing Visual Concepts: study <code>{html.escape(cfg.study)}</code></h1>
<p>Reproduction of Rahat and Venkateswara, <i>Dataset Augmentation by Mixing Visual Concepts</i> (WACV 2025),
with the MVC study kit. Dataset <code>{cfg.data.dataset}</code>, backbone <code>{cfg.backbone.kind}</code>,
classifier <code>{cfg.classify.backbone}</code>. Generated {time.strftime('%Y-%m-%d %H:%M')}.</p>
<h2>Tables</h2>{tables}
<h2>Figures</h2>{figures}
<h2>Executed notebooks</h2><ul>{links}</ul>
<h2>Resolved params</h2><pre>{html.escape(config_to_yaml(cfg))}</pre>
<h2>Provenance</h2><pre>{html.escape(json.dumps(prov, indent=2))}</pre>
<script>/* the page reports how many of its images decoded (checked by the tests in headless Chromium) */
window.addEventListener("load", () => {{ const imgs = [...document.images];
  document.body.dataset.images = imgs.length;
  document.body.dataset.imagesLoaded = imgs.filter(i => i.complete && i.naturalWidth > 0).length; }});</script>
</body></html>
"""
    write_text(paths.report / "index.html", page)
    return paths.report / "index.html"


def build_report(cfg: StudyConfig, show_progress: bool = True) -> Path:
    """Stage `report`: figures, tables and index.html for one study."""
    if not state.prepare(cfg, "report", []):
        return cfg.paths.report / "index.html"
    state.require(cfg, "classify")
    state.require(cfg, "metrics")
    start = time.time()
    make_figures(cfg)
    make_tables(cfg)
    out = write_index(cfg)
    state.mark_done(cfg, "report", time.time() - start)
    return out


def report_all(reports_root: Path | None = None) -> str:
    """`mvc report --all`: the classification table across every study under `reports/`, as Markdown."""
    root = reports_root or REPO_ROOT / "reports"
    frames = []
    for table in sorted(root.glob("*/tables/classification.csv")):
        t = pd.read_csv(table)
        t["study"] = table.parent.parent.name
        frames.append(t)
    if not frames:
        raise FileNotFoundError(f"no study has a classification table under {root}/*/tables/; run `mvc study PARAMS` first")
    allt = pd.concat(frames)
    allt["cell"] = allt["top1"].map("{:.2f}".format) + " ± " + allt["ci95"].map("{:.2f}".format)
    wide = allt.pivot_table(index="method", columns="study", values="cell", aggfunc="first")
    wide = wide.reindex([m for m in METHOD_ORDER if m in wide.index]).reset_index()
    write_table(wide, root / "_all" / "tables", "classification_all_studies",
                "Top-1 accuracy (%), mean ± 95% CI over seeds, per study")
    return wide.to_markdown(index=False)
