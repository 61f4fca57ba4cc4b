# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Data preparation
#
# Reads the dataset named by the params file in its standard on-disk format, makes seeded stratified splits
# (**train**: the labelled images, `data.shots` per class; **pool**: unlabelled images that only the surrogate
# backbone's pretraining sees; **val**; **test**) and caches the images at the profile's resolution.
#
# Writes `runs/<study>/splits.csv`, `images.npy`, `skipped.csv`. Takes seconds for digits.

# %% tags=["parameters"]
params = "params/digits.yaml"  # a params file, relative to the repository root
overrides = []  # each item overrides one field, written as for `mvc study --set`

# %%

from mvc import artifacts, data, figures, report
from mvc.notebook import open_study

cfg = open_study(params, overrides)

# %%
splits = data.prepare_dataset(cfg)
images = artifacts.load_images(cfg)
print(f"{len(splits)} images, {splits['label'].nunique()} classes, each {images.shape[1:]} (H, W, C)")

# %% [markdown]
# ## Images per class and split

# %%
data.split_summary(splits)

# %%
figures.class_histogram(splits);

# %% [markdown]
# ## The labelled training images, a row per class

# %%
figures.sample_grid(images, splits, per_class=cfg.report.examples_per_class * 2, max_classes=cfg.report.classes_in_figures);

# %% [markdown]
# ## Files that could not be read (skipped, listed in `skipped.csv`)

# %%
artifacts.read_skipped(cfg).head(20)

# %% [markdown]
# ## Summary

# %%
report.summary(cfg, "01")
