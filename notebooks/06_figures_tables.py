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
# # 06 · The paper's figures and tables
#
# Builds every figure (PNG and PDF) and table (CSV, Markdown, LaTeX) of the study into `reports/<study>/`, and
# `reports/<study>/index.html`, in the report's order: the main result, the method's figures, ablations and
# tests, image metrics, diagnostics. About a minute for digits.

# %% tags=["parameters"]
params = "params/digits.yaml"  # a params file, relative to the repository root
overrides = []  # each item overrides one field, written as for `mvc study --set`

# %%
import pandas as pd
from IPython.display import Image, Markdown, display

from mvc import report
from mvc.notebook import open_study
from mvc.paths import shown

cfg = open_study(params, overrides)

# %%
index = report.build_report(cfg)
print(shown(index))

# %% [markdown]
# ## The report, in order

# %%
for item, label, caption in report.numbered_items(cfg):
    path = report.item_path(cfg, item)
    display(Markdown(f"**{label}.** {caption}"), pd.read_csv(path) if item.kind == "table" else Image(filename=str(path)))

# %% [markdown]
# ## Across studies (every `reports/*/` that has run)

# %%
display(Markdown(report.report_all(cfg.paths.report.parent)))

# %% [markdown]
# ## Summary

# %%
report.summary(cfg, "06")
