# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Classification
#
# Every method of `classify.methods` trains the same classifier for the same number of optimizer steps on the
# same splits and seeds. The digits study runs 15: `none` (crop and flip), `autoaugment`, `randaugment`,
# `trivialaugment`, `mixup`, `cutmix`, `source_pretrained` (the surrogate's printed digits used directly:
# pretrain on them, then train on the shots), `sd_naive` (the naive synthetic images), `mvc`, `mvc_two_phase`
# (phase 2 on real images only, at a lower learning rate), `mvc_randaugment` (MVC's images with RandAugment),
# `pseudo_label` (self-training on the unlabelled pool the generator learns from: no method has data its
# comparators lack) and three oracle controls, MVC's M and p_synthetic with perfect images: `oracle_real`,
# `oracle_generator_res` (through the generator's VAE) and `oracle_noisy` (that set made as often wrong as MVC's
# images). The cell below prints what the study you opened runs. About 3 minutes for digits on 2 cores.

# %% tags=["parameters"]
params = "params/digits.yaml"  # a params file, relative to the repository root
overrides = []  # each item overrides one field, written as for `mvc study --set`

# %%

from mvc import classify, figures, inside, report, report_text, statistics
from mvc.notebook import open_study

cfg = open_study(params, overrides)
print("methods:", ", ".join(cfg.classify.methods))

# %%
results = classify.classify_all(cfg)
print(f"{len(results)} runs")

# %% [markdown]
# ## Inside one MVC batch
#
# Each real image is replaced by one of its synthetic images with probability `p_synthetic`.

# %%
images, synthetic = inside.classifier_batch(cfg, "mvc")
figures.marked_grid(images, synthetic);

# %% [markdown]
# ## Top-1 accuracy at the largest shots level
#
# Mean and 95% interval: over classifier seeds, or, with `replicates` > 1, over the replicates' means.

# %%
print(report_text.interval_sentence(cfg))
table = statistics.accuracy_table(results, shots=cfg.data.max_shots)
table

# %%
figures.accuracy_bars(table);

# %% [markdown]
# ## MVC against every baseline (paired over seeds, Holm's correction)
#
# The comparator named in advance (`report.comparator`) is marked; the others are a family of tests.

# %%
statistics.paired_tests(results, "mvc", cfg.report.comparator, shots=cfg.data.max_shots)

# %% [markdown]
# ## Every shots level (the few-shot curve, when `data.shots` is a list)

# %%
statistics.shots_table(results)

# %% [markdown]
# ## Ablations

# %%
statistics.ablation_table(results)

# %% [markdown]
# ## Summary

# %%
report.summary(cfg, "05")
