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
# # 03 · The backbone and MVC fine-tuning (Figure 3)
#
# For the surrogate profiles, first pretrains the small Stable-Diffusion-shaped backbone on the unlabelled pool
# with class-free captions (`runs/<study>/backbone/`, loadable by `StableDiffusionPipeline`). Then widens the
# UNet's `conv_in` (new weights zero) and fine-tunes it with MVC conditioning: a same-class conditioning image's
# latent concatenated to the noisy latent, MVC-mixed caption embeddings, conditioning dropout. The result,
# `runs/<study>/mvc/`, loads in `StableDiffusionInstructPix2PixPipeline`. About 6 minutes for digits on 2 cores.
# Every fine-tuned model of `mvc/vocabulary.py` has its stage here, run when a synthetic set of `generate.sets` needs
# it: `sd_finetuned` (the same recipe, text-only, each image's own caption, no conditioning image:
# `runs/<study>/sd_finetuned/`) and `mvc_nomix_trained` (MVC's fine-tuning without mixing: an ablation).
#
# On several GPUs: `accelerate launch --multi_gpu --num_processes N -m mvc finetune PARAMS`.

# %% tags=["parameters"]
params = "params/digits.yaml"  # a params file, relative to the repository root
overrides = []  # each item overrides one field, written as for `mvc study --set`

# %%
from mvc import backbone, figures, finetune, generate, inside, report
from mvc.notebook import open_study, show_items

cfg = open_study(params, overrides)

# %%
backbone.prepare_backbone(cfg)
for stage_name, run in finetune.MODEL_STAGES.items():  # MVC's `finetune` first, then the baselines' models
    print(stage_name, "->", run(cfg))

# %% [markdown]
# ## Inside one training batch
#
# Each row: a target image, the conditioning image of its class, the mixed text condition (the target's own
# caption always among the mixed ones) and which conditions were dropped for classifier-free guidance.

# %%
batch = inside.finetune_batch(cfg, n=6)
batch

# %%
figures.example_batch_figure(cfg, batch);

# %% [markdown]
# ## `conv_in` before and after widening
#
# The widened layer's new weights (on the conditioning latent `e_I`) start at zero, so at step 0 the model
# is exactly the backbone; fine-tuning makes them matter.

# %%
inside.conv_in_table(cfg)

# %% [markdown]
# ## Loss curves

# %%
show_items(cfg, ["backbone_loss_vae", "backbone_loss_unet", "finetune_loss"])

# %% [markdown]
# ## Samples at the kept checkpoints: the conditioning image, then images generated from it
#
# The report's copy of this figure is drawn by the generate stage (notebook 04), with the same seeds.

# %%
generate.preview_figure(cfg);

# %% [markdown]
# ## Summary

# %%
report.summary(cfg, "03")
