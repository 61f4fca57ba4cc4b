"""The report's sentences: what an interval covers, what the backbone knew before fine-tuning, and the headline's
warnings (synthetic images drawn below the classifier's resolution, captions that barely differ, sets whose images
mostly do not carry their class), which reading of the oracle controls the numbers support; captions'
`{section.field}` placeholders filled with the study's values."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mvc.artifacts import load_image_metrics
from mvc.config import StudyConfig
from mvc.registry import method_sets, role_of


def design_warnings(cfg: StudyConfig, metrics: pd.DataFrame) -> list[str]:
    """Sentences for the headline on what the design lets the generator show: synthetic images drawn below the
    resolution the classifier reads (upsampled), and captions that barely tell a class's images apart (under half of
    them distinct: mixing has little to mix)."""
    out = []
    if cfg.generation_upsampled:
        out.append(f"The synthetic images were drawn at {cfg.backbone.resolution} px (backbone.resolution) and "
                   f"upsampled to the {cfg.data.resolution} px the classifier and the judge read (data.resolution): "
                   f"they carry less detail than the real images; set backbone.resolution to {cfg.data.resolution} "
                   f"to draw them at the classifier's resolution.")
    real = metrics[metrics["synthetic_set"] == "real_train"]
    if len(real) and "distinct_caption_share" in real and float(real["distinct_caption_share"].min()) < 0.5:
        share = float(real["distinct_caption_share"].min())
        out.append(f"Only {share:.0%} of a class's labelled images have a caption of their own "
                   f"({cfg.caption.backend} captioner; the rest share theirs with another image of the class): mixing "
                   f"has little to mix here, so the mixing results (coarse, fine, no-mix) say little about the "
                   f"method.")
    return out


def headline_warnings(cfg: StudyConfig) -> list[str]:
    """Every sentence of the report's headline that warns the reader: the design's and the label fidelity's."""
    metrics = load_image_metrics(cfg)
    return design_warnings(cfg, metrics) + fidelity_warnings(cfg, metrics)


def fidelity_warnings(cfg: StudyConfig, metrics: pd.DataFrame) -> list[str]:
    """A sentence for each synthetic set whose label fidelity is more than `report.fidelity_gap` below the judge's
    accuracy on real images (the main unit's measures): its images mostly do not carry their class."""
    out = []
    judge = float(metrics["judge_accuracy_on_real"].iloc[0]) if len(metrics) else 1.0
    if judge < cfg.report.judge_floor:
        return [f"The judge ({cfg.metrics.judge_backbone}, trained on real {' and '.join(cfg.metrics.judge_splits)} "
                f"images) reads only {judge:.0%} of real {cfg.metrics.judge_scored_on} images, below "
                f"report.judge_floor ({cfg.report.judge_floor:.0%}): label fidelity, the filter of mvc_filtered and "
                f"the recipe chosen on fidelity mean little on this data; set metrics.judge_backbone: "
                f"efficientnet_lite0 (a pretrained network) or give the judge more images."]
    selected = (cfg.paths.report / "selection" / "selection.csv").exists()
    hint = "even with the recipe `mvc select` chose on val" if selected else "or choose the recipe with `mvc select`"
    for row in metrics[metrics["synthetic_set"] != "real_train"].itertuples():
        if row.label_fidelity < row.judge_accuracy_on_real - cfg.report.fidelity_gap:
            users = [m for m in cfg.classify.methods if row.synthetic_set in method_sets(m, cfg.classify)]
            out.append(f"The {row.synthetic_set} images carry their intended class {row.label_fidelity:.0%} of the "
                       f"time, against {row.judge_accuracy_on_real:.0%} for real {cfg.metrics.judge_scored_on} "
                       f"images read by the same judge: most of them are of another class or of none, so the "
                       f"classifiers that train on them ({', '.join(users) or 'none in this study'}) learn partly "
                       f"from mislabelled images; read their rows with that in mind ({hint}; `mvc_filtered` keeps "
                       f"only the images the judge labels as intended)." + _ceiling(row))
    return out


def _ceiling(row) -> str:
    """What the generator's bottleneck allows (`judge_accuracy_through_vae`), where the metrics measured it."""
    ceiling = getattr(row, "judge_accuracy_through_vae", float("nan"))
    if pd.isna(ceiling):
        return ""
    return (f" Through the backbone's VAE alone (encoded and decoded, no sampling) the judge reads {ceiling:.0%} of "
            f"the same real images: what a generator drawing the real images exactly would reach"
            + (", so the VAE, more than the sampler, limits this set." if row.label_fidelity >= ceiling - 0.05
               else "."))


def interval_sentence(cfg: StudyConfig) -> str:
    """What a reported interval covers, for captions."""
    c = cfg.classify
    if cfg.replicates == 1:
        return (f"mean and 95% t-interval over the classifier seeds {c.seeds} (the generative pipeline is one run: "
                f"the interval covers classifier seeds only)")
    return (f"mean over the classifier seeds {c.seeds}, and a 95% t-interval over the means of the "
            f"{cfg.replicates} replicates of the generative pipeline (replicate r fine-tunes and generates with its "
            f"own seeds; classifier seed number i is paired with replicate i mod {cfg.replicates}), so the interval "
            f"covers the variance of fine-tuning, generation and classifier training"
            + (". With 2 replicates the interval has one degree of freedom (t = 12.7): its half-widths are too wide "
               "to read as a precision; 3 or more replicates give intervals that can" if cfg.replicates == 2 else ""))


def paired_interval_sentence(cfg: StudyConfig) -> str:
    if cfg.replicates == 1:
        return "The interval and test cover classifier seeds only."
    return (f"The differences are averaged within each of the {cfg.replicates} replicates; the interval and the "
            f"t-test are over those replicate means ({cfg.replicates - 1} degrees of freedom"
            + ("; too few for a readable interval" if cfg.replicates == 2 else "") + ").")


_SENTENCES = {"interval": interval_sentence, "paired_interval": paired_interval_sentence}


def format_caption(template: str, cfg: StudyConfig) -> str:
    """Fill `{section.field}` placeholders with the study's values (and `{interval}`: what intervals cover)."""
    out, rest = "", template
    while "{" in rest:
        before, _, after = rest.partition("{")
        field, _, rest = after.partition("}")
        if field in _SENTENCES:
            out += before + _SENTENCES[field](cfg)
            continue
        node = cfg
        for part in field.split("."):
            node = getattr(node, part)
        out += before + str(node)
    return out + rest


def backbone_sentence(cfg: StudyConfig) -> str:
    """What the backbone knew before MVC fine-tuning, which is what the naive set shows."""
    if cfg.backbone.kind == "pretrained":
        return f"The backbone is the pretrained {cfg.backbone.model}."
    domain = cfg.backbone.surrogate.source_domain
    if domain == "none":
        return ("The surrogate backbone was pretrained on the unlabelled pool only, with no labelled source domain: "
                "it never saw a class name, so the naive set shows a backbone that does not know the classes.")
    return (f"The surrogate backbone was pretrained on the unlabelled pool (class-free captions) and on a labelled "
            f"source domain, {domain}, captioned with the class prompt: it knows the classes, in another domain.")


def _step(table: pd.DataFrame, a: str, b: str) -> dict | None:
    rows = table[(table["method"] == a) & (table["baseline"] == b)] if len(table) else table
    return rows.iloc[0].to_dict() if len(rows) else None


def _said(row: dict) -> str:
    return f"{row['difference']:+.2f} ± {row['ci95']:.2f} points (mde80 {row['mde80']:.2f})"


def _resolved(row: dict) -> int:
    """+1 / -1 where the 95% interval lies above / below 0, else 0."""
    lo, hi = row["difference"] - row["ci95"], row["difference"] + row["ci95"]
    return 1 if lo > 0 else -1 if hi < 0 else 0


def oracle_reading(table: pd.DataFrame) -> str | None:
    """Which reading the oracle controls support (`mvc.statistics.oracle_tests` at one shots level): no added-image
    method can win on this protocol (a perfect generator does not beat no augmentation), the generator explains
    MVC's gap (MVC level with the oracle made as wrong as MVC), or mixing adds something beyond fidelity (MVC above
    it); None where the oracles did not run."""
    mvc, ref = role_of("under_test"), role_of("reference")
    head, fidelity = _step(table, "oracle_real", ref), _step(table, mvc, "oracle_noisy")
    if head is None or fidelity is None:
        return None
    bottleneck = _step(table, "oracle_generator_res", "oracle_real")
    neck = (f" Through the generator's bottleneck (its resolution and VAE) the same images give {_said(bottleneck)} "
            f"against the real ones." if bottleneck is not None else "")
    if _resolved(head) <= 0:
        return (f"No added-image method can be shown to win on this protocol: real pool images of the class, in "
                f"place of generated ones at MVC's M and p_synthetic (oracle_real), give {_said(head)} over {ref}, "
                f"an interval that does not exclude 0; so a null of MVC here says nothing about the method." + neck)
    side = _resolved(fidelity)
    if side > 0:
        verdict = (f"Mixing adds something beyond label fidelity: MVC is above a perfect generator made as often "
                   f"wrong as MVC's images are (MVC - oracle_noisy: {_said(fidelity)}).")
    elif side == 0:
        verdict = (f"The generator explains MVC's result: MVC is level with a perfect generator made as often wrong "
                   f"as MVC's images are (MVC - oracle_noisy: {_said(fidelity)}), so mixing adds nothing resolvable "
                   f"beyond its fidelity.")
    else:
        verdict = (f"MVC is below a perfect generator made as often wrong as MVC's images are (MVC - oracle_noisy: "
                   f"{_said(fidelity)}): its images lack more than their class (detail, variety).")
    return (f"A perfect generator would help here: oracle_real gives {_said(head)} over {ref}. " + verdict + neck)


def primary_reading(table: pd.DataFrame) -> str | None:
    """The contrast declared before the run (`mvc.statistics.primary_contrast`) in words: its difference and
    interval, whether the interval excludes 0, what the design can detect (mde80) and what detecting
    `report.primary_target` points would take; None where it did not run."""
    if table is None or table.empty:
        return None
    row = table.iloc[0].to_dict()
    level = "every image labelled" if row["shots"] == "all" else f"{row['shots']} labelled images per class"
    head = (f"Declared in the params before the run: {row['method']} - {row['baseline']} at {level} is "
            f"{_said(row)}, over {row['replicates'] if row['replicates'] > 1 else row['seeds']} "
            f"{'replicates' if row['replicates'] > 1 else 'classifier seeds'} (p = {row['p_value']:.3g}, one "
            f"uncorrected test). ")
    side = _resolved(row)
    said = (f"{row['method']} is {'above' if side > 0 else 'below'} {row['baseline']}: the interval excludes 0."
            if side else f"The interval does not exclude 0: no difference is shown, and one smaller than "
            f"{row['mde80']:.2f} points either way is not ruled out.")
    need = row["units_for_target"]
    if np.isfinite(row["mde80"]) and row["mde80"] > row["target"] and np.isfinite(need):
        unit = "replicates" if row["replicates"] > 1 else "classifier seeds"
        said += (f" To detect {row['target']:g} point(s) 80% of the time at the spread seen would take about "
                 f"{int(need)} {unit}.")
    return head + said
