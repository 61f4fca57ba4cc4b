"""Write the thin numbered notebooks under notebooks/ (no outputs; a `parameters` cell each).

Run after changing a notebook's cells here: `python scripts/make_notebooks.py`.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]

PARAMS = '''params = "params/digits.yaml"  # a params file, relative to the repository root
overrides = []  # key=value strings that override the params file'''

SETUP = '''import logging

from IPython.display import Image, Markdown, display

import mvc
from mvc import plots

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
cfg = mvc.load_config(params, overrides)
paths = cfg.paths
print(f"study {cfg.study}: work in {paths.run}, report in {paths.report}")'''

NOTEBOOKS = {
    "01_data_preparation": [
        ("md", """# 01 · Data preparation

Reads the dataset named by the params file in its standard on-disk format, makes seeded stratified splits
(**train**: N labelled images per class; **pool**: unlabelled images used only to pretrain the surrogate
backbone; **val**; **test**) and caches the images at the profile's resolution.

Writes `runs/<study>/splits.csv`, `runs/<study>/images.npy` and `reports/<study>/figures/samples.png`."""),
        ("params", PARAMS),
        ("code", SETUP + "\nfrom mvc import data"),
        ("code", '''splits = data.prepare_dataset(cfg)
images = data.load_images(cfg)
print(f"{len(splits)} images, {splits['label'].nunique()} classes, shape {images.shape[1:]}")'''),
        ("md", "## Images per class and split"),
        ("code", "data.split_summary(splits)"),
        ("code", '''fig = plots.class_histogram(splits)
plots.save(fig, paths.figures / "class_histogram.png")'''),
        ("md", "## Training images per class"),
        ("code", '''fig = plots.sample_grid(images, splits, per_class=cfg.report.examples_per_class * 2,
                        max_classes=cfg.report.classes_in_figures)
plots.save(fig, paths.figures / "samples.png")'''),
        ("md", "## Skipped files (unreadable or corrupt images)"),
        ("code", '''skipped = data.read_skipped(cfg)
print(f"{len(skipped)} skipped")
skipped.head(20)'''),
    ],
    "02_captioning": [
        ("md", """# 02 · Captioning and caption embeddings

Captions every training and pool image (BLIP-2 for hub profiles; the offline attribute captioner otherwise),
forms `prompt(y) + ", " + caption`, encodes each caption once with the backbone's text encoder (token-level
last hidden state, cached in safetensors) and shows what MVC mixing does in embedding space."""),
        ("params", PARAMS),
        ("code", SETUP + "\nimport numpy as np\nfrom mvc import captioning, data, figures, text"),
        ("code", '''captions = captioning.caption_dataset(cfg)
emb = text.embed_captions(cfg)
names = data.class_names(data.load_splits(cfg))
print(f"{len(captions)} captions, {captions['caption'].nunique()} distinct; embeddings {tuple(emb.embeddings.shape)}")'''),
        ("md", "## Captions per class (training split)"),
        ("code", '''train = captions[captions["split"] == "train"]
train.groupby("label").head(2)[["label", "text"]].assign(label=lambda f: f["label"].map(lambda y: names[y]))'''),
        ("md", "## Most frequent caption phrases per class"),
        ("code", "captioning.top_words(captions[captions['split'] == 'train'], names)"),
        ("md", """## Caption embeddings (PCA) with MVC mixes

Coarse mixes (Dirichlet weights over `k` captions) spread inside the class's cloud; fine mixes stay close to
their anchor caption. Mixing never crosses classes."""),
        ("code", '''anchors = np.arange(len(emb.labels))
m = cfg.generate.mixing
mixes = {mode: (text.mix(emb.embeddings, emb.labels, anchors, mode, m.k, m.alpha, m.beta_max, seed=cfg.seed).numpy(),
                emb.labels) for mode in ("coarse", "fine")}
fig = figures.embedding_map(emb.embeddings.numpy(), emb.labels, names, mixes)
plots.save(fig, paths.figures / "caption_embeddings_pca.png")'''),
        ("code", '''dist = {mode: float(np.linalg.norm((e - emb.embeddings.numpy()).reshape(len(e), -1), axis=1).mean())
        for mode, (e, _) in mixes.items()}
print("mean distance of a mix to its anchor caption:", dist)'''),
    ],
    "03_mvc_finetuning": [
        ("md", """# 03 · The backbone and MVC fine-tuning

For the surrogate profiles, first pretrains the small Stable-Diffusion-shaped backbone on the unlabelled pool
with class-free captions (`runs/<study>/backbone/`, loadable by `StableDiffusionPipeline`). Then widens the
UNet's `conv_in` (new weights zero) and fine-tunes it with MVC conditioning (Figure 3): a same-class
conditioning image's latent concatenated to the noisy latent, MVC-mixed caption embeddings, conditioning
dropout. The result, `runs/<study>/mvc/`, loads in `StableDiffusionInstructPix2PixPipeline`.

On several GPUs run the same stage as `accelerate launch --multi_gpu --num_processes N -m mvc finetune PARAMS`."""),
        ("params", PARAMS),
        ("code", SETUP + "\nimport pandas as pd\nfrom mvc import figures, finetune, generate, models"),
        ("code", '''models.prepare_backbone(cfg)
finetune.finetune(cfg)
mvc.state.stage_info(cfg, "finetune")'''),
        ("md", "## Loss curves"),
        ("code", '''loss = finetune.load_loss(cfg)
fig = figures.loss_curve(loss)
fig.axes[0].set_title("MVC fine-tuning")
plots.save(fig, paths.figures / "finetune_loss.png")
backbone_loss = paths.run / "backbone_loss.csv"
if backbone_loss.exists():
    bl = pd.read_csv(backbone_loss)
    for part, group in bl.groupby("part"):
        fig = figures.loss_curve(group.reset_index(drop=True))
        fig.axes[0].set_title(f"surrogate pretraining: {part}")
        plots.save(fig, paths.figures / f"backbone_loss_{part}.png")'''),
        ("md", "## Samples at checkpoints: the conditioning image, then images generated from it"),
        ("code", '''rows = generate.checkpoint_previews(cfg, n_sources=min(3, cfg.report.classes_in_figures), per_source=4)
fig = figures.image_grid(rows)
plots.save(fig, paths.figures / "finetune_samples.png")'''),
    ],
    "04_generation": [
        ("md", """# 04 · Generation and image metrics

`M` images per labelled training image from the MVC model in each mixing mode (two guidance scales, Figure 4),
and the naive baseline (the backbone before fine-tuning, text only, same prompts and count). Then distance to
the real domain (FID, KID), label fidelity and diversity per generator.

Several processes: `accelerate launch --num_processes N -m mvc generate PARAMS` (each its own slice)."""),
        ("params", PARAMS),
        ("code", SETUP + "\nfrom mvc import generate, metrics, report"),
        ("code", '''sets = generate.generate_all(cfg)
{name: len(m) for name, m in sets.items()}'''),
        ("md", "## Image metrics"),
        ("code", '''table = metrics.image_metrics(cfg)
table'''),
        ("md", "## Figures 1, 2 and 5"),
        ("code", '''saved = report.make_figures(cfg)
for name in ("figure1_real_naive_mvc", "figure2_coarse_fine", "figure5_real_mvc_naive"):
    display(Markdown(f"### {name}"), Image(filename=str(saved[name])))'''),
    ],
    "05_classification": [
        ("md", """# 05 · Classification

Every method trains the same classifier for the same number of optimizer steps on the same splits and seeds:
`none` (crop and flip), AutoAugment, RandAugment, TrivialAugment, MixUp, CutMix, the naive synthetic images,
MVC, and MVC with two-phase training (phase 2 on real images only, at a lower learning rate)."""),
        ("params", PARAMS),
        ("code", SETUP + "\nfrom mvc import classify, report"),
        ("code", '''results = classify.classify_all(cfg)
print(f"{len(results)} runs")'''),
        ("md", "## Top-1 accuracy: mean and 95% confidence interval over seeds"),
        ("code", '''table = report.accuracy_table(results)
table'''),
        ("code", '''fig = report.accuracy_bars(table)
plots.save(fig, paths.figures / "classification_bars.png")'''),
        ("md", "## MVC against the best non-MVC method (paired over seeds)"),
        ("code", '''import pandas as pd
pd.DataFrame([d for m in ("mvc", "mvc_two_phase") if (d := report.paired_difference(results, m))])'''),
        ("md", "## Ablations"),
        ("code", "report.ablation_table(results)"),
    ],
    "06_figures_tables": [
        ("md", """# 06 · The paper's figures and tables

Builds every figure (PNG and PDF) and table (CSV, Markdown, LaTeX) of the study into `reports/<study>/`, and
the self-contained `reports/<study>/index.html`."""),
        ("params", PARAMS),
        ("code", SETUP + "\nimport pandas as pd\nfrom mvc import report"),
        ("code", '''index = report.build_report(cfg)
print(index)'''),
        ("code", '''for name in ("classification", "paired_difference", "ablation", "image_metrics"):
    display(Markdown(f"### {name}"), pd.read_csv(paths.tables / f"{name}.csv"))'''),
        ("code", '''for png in sorted(paths.figures.glob("figure*.png")):
    display(Markdown(f"### {png.stem}"), Image(filename=str(png)))'''),
        ("md", "## Across studies (every `reports/*/` that has run)"),
        ("code", "display(Markdown(report.report_all(paths.report.parent)))"),
    ],
}


def build(name: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, src) in enumerate(cells):
        if kind == "md":
            cell = new_markdown_cell(src)
        else:
            cell = new_code_cell(src)
            if kind == "params":
                cell.metadata["tags"] = ["parameters"]
        cell["id"] = f"{name[:2]}-{i:02d}"
        nb.cells.append(cell)
    return nb


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nbformat.write(build(name, cells), ROOT / "notebooks" / f"{name}.ipynb")


if __name__ == "__main__":
    main()
