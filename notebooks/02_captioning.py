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
# # 02 · Captions, caption embeddings and MVC mixing
#
# Captions every training and pool image (BLIP-2 in the paper profiles; the offline attribute captioner
# otherwise), forms `prompt(y) + ", " + caption`, and encodes each caption once with the backbone's text
# encoder (the token-level last hidden state, cached in safetensors). Then looks inside one MVC mix and shows
# where mixes land in embedding space. Takes seconds for digits.

# %% tags=["parameters"]
params = "params/digits.yaml"  # a params file, relative to the repository root
overrides = []  # each item overrides one field, written as for `mvc study --set`

# %%
import numpy as np

from mvc import artifacts, captioners, captioning, embed, figures, mixing, report
from mvc.notebook import open_study

cfg = open_study(params, overrides)

# %%
captions = captioning.caption_dataset(cfg)
emb = embed.embed_captions(cfg)
names = artifacts.class_names(artifacts.load_splits(cfg))
print(f"{len(captions)} captions, {captions['caption'].nunique()} distinct; embeddings {tuple(emb.embeddings.shape)} (N, L, d)")

# %% [markdown]
# ## Two captions per class (training split)

# %%
emb.frame.groupby("label").head(2).assign(label=lambda f: f["label"].map(lambda y: names[y]))

# %% [markdown]
# ## The most frequent caption phrases per class

# %%
captioners.top_words(captions[captions["split"] == "train"], names)

# %% [markdown]
# ## Inside one mix
#
# A coarse+fine mix for the first training image: Dirichlet weights over `k` captions of its class, then a
# step of at most `beta_max` towards one more caption of the class. The weights sum to one; every caption
# is of the anchor's class.

# %%
m = cfg.finetune.mixing
plan = mixing.draw_mix(emb.labels, np.array([0]), "coarse+fine", m.k, m.alpha, m.beta_max, np.random.default_rng(cfg.seed))
mixing.plan_table(plan, emb.frame["text"].tolist())

# %% [markdown]
# ## Caption embeddings (PCA) with MVC mixes
#
# Coarse mixes spread inside their class's cloud; fine mixes stay close to their anchor caption. Mixing never
# crosses classes.

# %%
figures.caption_map(cfg);

# %% [markdown]
# ## Summary

# %%
report.summary(cfg, "02")
