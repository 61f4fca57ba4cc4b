"""`mvc select PARAMS`: choose a study's recipe on its validation split and the image measures, never on test.

The selection runs the study's own stages in a study of its own (`<study>-select`: its largest shots level, one
replicate), with every measure moved off test: the judge learns from the pool (from val where there is none) and is
scored on val, distances are to val, classifiers are scored on val. Test images are never read.

1. The generator (MVC): each `select.finetune_steps` x `select.cond_image`, fine-tuned once, then sampled at each
   `select.guidance_text` x `select.guidance_image`; each trial's MVC sets measured (`mvc.metrics`).
2. Each text-only or SDEdit set of the study (sd_naive, sd_img2img, sd_finetuned): each `select.set_guidance`,
   with MVC's chosen fine-tuning (sd_finetuned is trained as MVC is, mixing included: it differs in the
   conditioning alone).
3. The classifier knobs, on val accuracy over `select.seeds`: the classifier backbone (`select.classifier_backbone`,
   scored by `none`; every method then trains the chosen one), RandAugment's magnitude and operations, and MVC's
   synthetic share.

One rule picks every generator trial (`SelectConfig`): among the trials whose copies are at most `select.max_copies`
(of the labelled images, the pool and the source domain), the highest label fidelity; within
`select.fidelity_tolerance` of it, the highest novelty (`nn_distance_vs_real`). No trial starts once
`select.budget_minutes` have passed (the trials an earlier call finished count to it); a knob left untried keeps the
params file's value, and the log says so. With `select.run_first`, `mvc study` runs the selection before the study.

Writes `reports/<study>/selection/selection.{csv,md}` (the log: every trial, its measures, the chosen one and why),
and a params file that extends the given one with the chosen values (default `<params>_selected.yaml`). Each trial's
row is appended to `trials.jsonl` there as it finishes, keyed by its params hash: an interrupted selection resumes
without running a finished trial again.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from mvc.artifacts import load_image_metrics, load_results
from mvc.config import StudyConfig, with_values
from mvc.io import atomic_path, write_csv
from mvc.paths import shown
from mvc.pipeline import stage_function
from mvc.registry import METHODS, mvc_set_names, role_of, set_spec, synthetic_set_names
from mvc.stages import upstream
from mvc.state import is_done, output_paths

log = logging.getLogger(__name__)

SHARED_STAGES = ("data", "caption", "embed", "backbone")  # the same in the study and its selection: adopted
# the recipe's knobs (not the selection's scaffolding)
PARAM_KEYS = ("finetune.steps", "finetune.cond_image", "generate.guidance", "generate.set_guidance",
              "classify.backbone", "classify.pretrained", "classify.randaugment", "classify.p_synthetic")
LOG_COLUMNS = ["phase", "subject", "trial", "knobs", "label_fidelity", "copies", "copies_pool", "copies_source",
               "nn_distance_vs_real", "fid", "val_top1", "chosen", "why", "seconds"]


def knobs(values: dict[str, Any]) -> str:
    """A trial's recipe values as the log prints them (not the selection's scaffolding, such as generate.sets)."""
    return ", ".join(f"{k}={v}" for k, v in values.items() if k.startswith(PARAM_KEYS))


def selection_view(cfg: StudyConfig) -> StudyConfig:
    """The study as the selection runs it: its own folders, its largest level, one replicate, nothing read from
    test (the judge learns from the pool, or from val where there is none, and is scored on val: without a pool its
    accuracy on real images is not measured, since val taught it)."""
    pool = cfg.data.pool_per_class != 0
    return with_values(cfg, {
        "study": f"{cfg.study}-select", "data.shots": cfg.data.max_shots, "replicates": 1, "redraw_labelled": False,
        "curve_methods": None, "classify.methods": [role_of("reference")], "classify.evaluate_on": "val",
        "classify.ablation": False,
        "classify.seeds": cfg.select.seeds, "metrics.reference_split": "val", "metrics.judge_scored_on": "val",
        "metrics.judge_splits": ["pool"] if pool else ["val"]})


def adopt_shared_stages(study: StudyConfig, view: StudyConfig) -> list[str]:
    """Copy the outputs of the stages before fine-tuning from the study into the selection's folders where the study
    finished them with the same params (the selection then does not prepare the data or the backbone again)."""
    adopted = []
    for name in SHARED_STAGES:
        record = study.paths.stages / f"{name}.json"
        if study.stage_hash(name) != view.stage_hash(name) or not record.exists() or not is_done(study, name):
            break
        if is_done(view, name):
            continue
        for src, dst in zip(output_paths(study, name), output_paths(view, name)):
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True)
            elif src.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        view.paths.stages.mkdir(parents=True, exist_ok=True)
        shutil.copy2(record, view.paths.stages / record.name)
        adopted.append(name)
    return adopted


def run_through(cfg: StudyConfig, last: str) -> None:
    """Run the stages `last` needs, then `last` (each skips when up to date)."""
    for name in upstream(last) + [last]:
        stage_function(name)(cfg, show_progress=False)


def choose(rows: pd.DataFrame, max_copies: float, tolerance: float) -> tuple[int, str]:
    """The index of the trial the rule picks among `rows` (one per trial: mean measures of its sets), and why."""
    copies = rows[["copies", "copies_pool", "copies_source"]].max(axis=1, skipna=True).fillna(0)
    eligible = rows[copies <= max_copies]
    if eligible.empty:
        pick = int(copies.idxmin())
        return pick, f"no trial kept copies at or below {max_copies:.0%}: the fewest copies ({copies[pick]:.1%})"
    best = eligible["label_fidelity"].max()
    close = eligible[eligible["label_fidelity"] >= best - tolerance]
    pick = int(close["nn_distance_vs_real"].fillna(-np.inf).idxmax())
    why = (f"highest label fidelity ({best:.3f}) with copies at most {max_copies:.0%}" if len(close) == 1 else
           f"most novel (nn_distance_vs_real {rows.loc[pick, 'nn_distance_vs_real']:.3f}) of the {len(close)} trials "
           f"within {tolerance:.3f} of the highest label fidelity ({best:.3f}), copies at most {max_copies:.0%}")
    return pick, why


@dataclass
class Selection:
    """What a selection tried, what it chose, and where it stopped."""

    study: StudyConfig
    view: StudyConfig
    start: float = field(default_factory=time.time)
    rows: list[dict] = field(default_factory=list)
    chosen: dict[str, Any] = field(default_factory=dict)
    stopped: str | None = None
    done: dict[str, dict] = field(default_factory=dict)  # trials measured before an interruption, by params hash
    reused_seconds: float = 0.0  # what the trials read back from an earlier call took: they count to the budget

    @property
    def trials_file(self) -> Path:
        """Each finished trial's row, appended as it finishes: an interrupted selection resumes from it."""
        return self.study.paths.report / "selection" / "trials.jsonl"

    def load_done(self) -> None:
        if self.trials_file.exists():
            for line in self.trials_file.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by the interruption
                self.done[row["_key"]] = row

    def record(self, row: dict) -> dict:
        self.trials_file.parent.mkdir(parents=True, exist_ok=True)
        with self.trials_file.open("a") as f:
            f.write(json.dumps(row, default=float) + "\n")
        return row

    def reuse(self, key: str, values: dict[str, Any]) -> dict:
        """A trial finished by an earlier call, read back (its time counts to the budget)."""
        self.reused_seconds += float(self.done[key].get("seconds") or 0)
        return {**self.done[key], "_values": values}

    def within_budget(self) -> bool:
        minutes = (time.time() - self.start + self.reused_seconds) / 60
        if minutes >= self.study.select.budget_minutes and self.stopped is None:
            self.stopped = (f"budget of {self.study.select.budget_minutes:g} minutes reached after {minutes:.1f}: "
                            f"the knobs not tried keep the params file's values")
        return self.stopped is None

    def trial_view(self, values: dict[str, Any]) -> StudyConfig:
        return with_values(self.view, {**self.chosen, **values})

    def measure_sets(self, phase: str, subject: str, values: dict[str, Any], sets: list[str],
                     measured: list[str] | None = None) -> dict | None:
        """Generate `sets` under `values` and measure `measured` (default: all of them); the trial's row (the mean
        over the measured sets), or None when the budget is spent."""
        g_sets = [s for s in sets if set_spec(s)[0].per_mode is False]
        cfg = self.trial_view({**values, "generate.sets": g_sets})
        key = f"{subject}:{cfg.stage_hash('metrics')}"
        if key in self.done:
            self.rows.append(self.reuse(key, values))
            return self.rows[-1]
        if not self.within_budget():
            return None
        t0 = time.time()
        run_through(cfg, "metrics")
        measures = load_image_metrics(cfg).set_index("synthetic_set").loc[list(measured or sets)]
        row = {"phase": phase, "subject": subject, "trial": len([r for r in self.rows if r["subject"] == subject]),
               "knobs": knobs(values),
               **measures[LOG_COLUMNS[4:10]].mean().to_dict(), "val_top1": np.nan, "chosen": False, "why": "",
               "seconds": round(time.time() - t0, 1), "_key": key}
        self.rows.append({**self.record(row), "_values": values})
        row = self.rows[-1]
        log.info("select %s %s: %s", subject, row["knobs"], {k: row[k] for k in LOG_COLUMNS[4:10]})
        return row

    def decide(self, subject: str) -> None:
        """Apply the rule to the trials of `subject` and keep the chosen values."""
        trials = [r for r in self.rows if r["subject"] == subject]
        if not trials:
            return
        frame = pd.DataFrame(trials)
        pick, why = choose(frame, self.study.select.max_copies, self.study.select.fidelity_tolerance)
        trials[pick]["chosen"], trials[pick]["why"] = True, why
        self.chosen.update(trials[pick]["_values"])

    def classifier_trials(self, subject: str, grid: list[dict[str, Any]], methods: list[str]) -> None:
        """Each value set of `grid` scored by the val accuracy of `methods` over the selection's seeds."""
        scored = []
        for values in grid:
            cfg = self.trial_view({**values, "classify.methods": methods})
            key = f"{subject}:{cfg.stage_hash('classify')}"
            if key in self.done:
                row = self.reuse(key, values)
            elif not self.within_budget():
                break
            else:
                t0 = time.time()
                run_through(cfg, "classify")
                res = load_results(cfg)
                top1 = float(res[res["method"] == methods[-1]]["top1"].mean() * 100)
                row = {"phase": "classifier", "subject": subject, "trial": len(scored),
                       "knobs": knobs(values), "val_top1": round(top1, 2),
                       "chosen": False, "why": "", "seconds": round(time.time() - t0, 1), "_key": key}
                row = {**self.record(row), "_values": values}
            self.rows.append(row)
            scored.append(row)
        if scored:
            best = max(scored, key=lambda r: r["val_top1"])  # the first of equals: the grid's order
            best["chosen"], best["why"] = True, f"highest mean validation top-1 over seeds {self.study.select.seeds}"
            self.chosen.update(best["_values"])


def generator_grid(cfg: StudyConfig) -> list[tuple[dict, list[dict]]]:
    """[(fine-tuning values, [sampling values, ...]), ...] of MVC's trials."""
    s = cfg.select
    tunes = [{"finetune.steps": n, "finetune.checkpoint_every": n, "finetune.cond_image": c}
             for n in (s.finetune_steps or [cfg.finetune.steps]) for c in (s.cond_image or [cfg.finetune.cond_image])]
    samples = [{"generate.guidance_text": t, "generate.guidance_image": i}
               for t in (s.guidance_text or [cfg.generate.guidance_text])
               for i in (s.guidance_image or [cfg.generate.guidance_image])]
    return [(t, samples) for t in tunes]


def select_recipe(cfg: StudyConfig) -> Selection:
    """Run every trial of `cfg.select` that the budget allows; the selection with its log and chosen values."""
    view = selection_view(cfg)
    sel = Selection(cfg, view)
    sel.load_done()
    adopted = adopt_shared_stages(cfg, view)
    if adopted:
        log.info("select: adopted the study's %s", ", ".join(adopted))
    mvc_sets = list(mvc_set_names(cfg.classify.mvc_modes))
    # 1. MVC: fine-tuning and guidance, judged on its sets' image measures
    for tune, samples in generator_grid(cfg):
        for sample in samples:
            sel.measure_sets("generator", "mvc", {**tune, **sample, "generate.modes": list(cfg.classify.mvc_modes)},
                             mvc_sets)
    sel.decide("mvc")
    # 2. each text-only or SDEdit set, with MVC's chosen fine-tuning
    for name in [n for n in synthetic_set_names(cfg.generate) if set_spec(n)[0].draws.text_only]:
        for s_text in cfg.select.set_guidance:
            sel.measure_sets("generator", name, {"generate.modes": list(cfg.classify.mvc_modes),
                                                 f"generate.set_guidance.{name}": s_text}, mvc_sets + [name],
                             [name])
        sel.decide(name)
    # 3. classifier knobs on val accuracy: the backbone first (every method trains it), then the augmentations'
    s, c = cfg.select, cfg.classify
    base = {"generate.modes": list(c.mvc_modes), "generate.sets": []}
    if s.classifier_backbone:
        sel.classifier_trials("classifier_backbone", [
            {**base, "classify.backbone": b, "classify.pretrained": b != "small_cnn"} for b in s.classifier_backbone],
            [role_of("reference")])
    tuned = role_of("tuned_classical")
    if tuned in c.methods and (s.randaugment_magnitude or s.randaugment_num_ops):
        grid = [{**base, "classify.randaugment_magnitude": m, "classify.randaugment_num_ops": n}
                for m in (s.randaugment_magnitude or [c.randaugment_magnitude])
                for n in (s.randaugment_num_ops or [c.randaugment_num_ops])]
        sel.classifier_trials(tuned, grid, [tuned])
    if any(METHODS[m].is_mvc for m in c.methods) and s.p_synthetic:
        sel.classifier_trials("p_synthetic", [{**base, "classify.p_synthetic": p} for p in s.p_synthetic],
                              [role_of("under_test")])
    return sel


def chosen_values(sel: Selection) -> dict[str, Any]:
    """The recipe's values: the chosen knobs only (not the selection's own scaffolding such as generate.sets)."""
    return {k: v for k, v in sel.chosen.items() if k.startswith(PARAM_KEYS)}


def log_table(sel: Selection) -> pd.DataFrame:
    frame = pd.DataFrame(sel.rows, columns=LOG_COLUMNS)
    for col in LOG_COLUMNS[4:10]:
        frame[col] = pd.to_numeric(frame[col]).round(4)
    return frame


def write_log(sel: Selection, folder: Path, params: Path, out: Path, overrides: list[str] = ()) -> Path:
    """The selection log as CSV and Markdown in `folder`."""
    table = log_table(sel)
    write_csv(folder / "selection.csv", table)
    values = chosen_values(sel)
    lines = [f"# Recipe selection for study `{sel.study.study}`", "",
             f"`mvc select {shown(params)}` on the validation split and the image measures only (test never read): the "
             f"largest level ({sel.study.data.max_shots} labelled images per class), one replicate, classifier seeds "
             f"{sel.study.select.seeds}. Rule: {SELECT_RULE.format(s=sel.study.select)}", "",
             f"The trials took {log_table(sel)['seconds'].sum() / 60:.1f} minutes in all (this call "
             f"{(time.time() - sel.start) / 60:.1f}; a trial finished by an earlier call is read back, not run again), "
             f"within a budget of {sel.study.select.budget_minutes:g} minutes (a trial read back counts to it)"
             + (f"; overrides: {' '.join(overrides)}" if overrides else "") + "."
             + (f" Stopped: {sel.stopped}." if sel.stopped else ""),
             "", "Chosen (written to " + f"`{out.name}`" + "):", ""]
    lines += [f"- `{k}`: {v}" for k, v in values.items()] or ["- nothing (no trial ran)"]
    lines += ["", "Every trial:", "", table.fillna("").to_markdown(index=False), ""]
    with atomic_path(folder / "selection.md") as tmp:
        tmp.write_text("\n".join(lines))
    return folder / "selection.md"


SELECT_RULE = ("among the generator trials whose copies (of the labelled images, the pool and the source domain) "
               "are at most {s.max_copies:.0%}, the highest label fidelity; within {s.fidelity_tolerance} of it, the "
               "most novel (nn_distance_vs_real). Classifier knobs: the highest mean validation top-1.")


def write_params(sel: Selection, params: Path, out: Path) -> Path:
    """A params file that extends `params` with the chosen values (and says where they came from)."""
    tree: dict = {}
    for dotted, value in chosen_values(sel).items():
        node = tree
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    try:
        extends = str(params.resolve().relative_to(out.resolve().parent))
    except ValueError:
        extends = str(params.resolve())
    header = (f"# Chosen by `mvc select {params.name}` on the validation split and the image measures (test never "
              f"read);\n# the log: reports/{sel.study.study}/selection/selection.md. Run the study with this file.\n")
    with atomic_path(out) as tmp:
        tmp.write_text(header + yaml.safe_dump({"extends": extends, "study": sel.study.study, **tree,
                                                "select": {"run_first": False}}, sort_keys=False))
    return out


def default_output(params: Path) -> Path:
    return params.with_name(f"{params.stem}_selected.yaml")


def run_selection(cfg: StudyConfig, params: Path, out: Path | None = None, log_copy: Path | None = None,
                  overrides: list[str] = ()) -> Path:
    """`mvc select`: the trials, the log in the study's report folder (and a copy in `log_copy`), the params file."""
    out = out or default_output(params)
    sel = select_recipe(cfg)
    folder = cfg.paths.report / "selection"
    md = write_log(sel, folder, params, out, overrides)
    if log_copy is not None:
        log_copy.mkdir(parents=True, exist_ok=True)
        for f in (md, folder / "selection.csv"):
            shutil.copy2(f, log_copy / f"selection_{cfg.study}{f.suffix}")
    write_params(sel, params, out)
    return out

