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
# # 04 · Generation (Figure 4) and image metrics
#
# `M` images per labelled training image from the MVC model in each mixing mode of `generate.modes` (two guidance
# scales), and the sets of `generate.sets`. The digits study makes 5: `mvc_coarse`, `mvc_fine`, `sd_naive` (the
# backbone before fine-tuning, text only, the same prompts and count), and two oracle controls: `oracle_real` (a
# real pool image of the class in place of each generated one) and `oracle_generator_res` (those images through the
# backbone's VAE: the best this generator can draw). Then distance to the real domain (FID, KID), label fidelity,
# copies and diversity per synthetic set, and the judge's accuracy on real images through the VAE (what a generator
# that drew the real images exactly would reach). About 1 minute for digits on 2 cores.
#
# Several processes: `accelerate launch --num_processes N -m mvc generate PARAMS` (each its own slice).

# %% tags=["parameters"]
params = "params/digits.yaml"  # a params file, relative to the repository root
overrides = []  # each item overrides one field, written as for `mvc study --set`

# %%
from mvc import artifacts, generate, inside, metrics, report
from mvc.notebook import open_study, show_items

cfg = open_study(params, overrides)
print("synthetic sets:", ", ".join(artifacts.synthetic_set_names(cfg.generate)))

# %%
sets = generate.generate_all(cfg)
{name: len(manifest) for name, manifest in sets.items()}

# %% [markdown]
# ## Inside guidance: one source image under both scales
#
# `eps = eps(0,0) + s_I (eps(0,e_I) - eps(0,0)) + s_T (eps(e_T,e_I) - eps(0,e_I))`: a row per image scale
# `s_I`, a column per text scale `s_T` (after the source image); same noise and mix throughout.

# %%
inside.guidance_figure(cfg);

# %% [markdown]
# ## Image metrics

# %%
metrics.image_metrics(cfg)

# %% [markdown]
# ## Figures 1, 2 and 5, and the images closest to copies
#
# Label fidelity is easy to reach by replaying the training images, so every set's row above has its novelty
# beside it: `copies`, the share of images whose nearest labelled training image is closer than a third of the
# second nearest. The last figure shows the MVC images nearest to a copy above their nearest training image.

# %%
show_items(cfg, ["figure1_real_naive_mvc", "figure2_coarse_fine", "figure5_real_mvc_naive", "memorization_pairs",
                 "finetune_samples"])

# %% [markdown]
# ## Summary

# %%
report.summary(cfg, "04")
