# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
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
# With `generate.finetuned: true`, the same recipe also fine-tunes the backbone text-only, with each image's own
# caption and no conditioning image: the `sd_finetuned` baseline (`runs/<study>/text_finetuned/`); with
# `generate.nomix_trained: true`, MVC's fine-tuning without mixing (each image's own caption): an ablation.
#
# On several GPUs: `accelerate launch --multi_gpu --num_processes N -m mvc finetune PARAMS`.

# %% tags=["parameters"]
params = "params/digits.yaml"  # a params file, relative to the repository root
overrides = []  # each item overrides one field, written as for `mvc study --set`

# %%
from IPython.display import Image, Markdown, display

import mvc
from mvc import backbone, figures, finetune, generate, plots, report
from mvc.notebook import open_study

cfg = open_study(params, overrides)

# %%
backbone.prepare_backbone(cfg)
finetune.finetune(cfg)
finetune.finetune_text_only(cfg)  # the sd_finetuned baseline, when generate.finetuned asks for it
finetune.finetune_without_mixing(cfg)  # the no-mixing-in-training ablation, when generate.nomix_trained asks
mvc.state.stage_info(cfg, "finetune")

# %% [markdown]
# ## Inside one training batch
#
# Each row: a target image, the conditioning image of its class, the mixed text condition (the target's own
# caption always among the mixed ones) and which conditions were dropped for classifier-free guidance.

# %%
batch = finetune.example_batch(cfg, n=6)
batch

# %%
report.example_batch_figure(cfg, batch);

# %% [markdown]
# ## `conv_in` before and after widening
#
# The widened layer's new weights (on the conditioning latent `e_I`) start at zero, so at step 0 the model
# is exactly the backbone; fine-tuning makes them matter.

# %%
finetune.conv_in_table(cfg)

# %% [markdown]
# ## Loss curves

# %%
report.make_figures(cfg, "diagnostics")
display(*(Image(filename=str(cfg.paths.figures / f"{name}.png")) for name in ("backbone_loss_vae", "backbone_loss_unet", "finetune_loss") if (cfg.paths.figures / f"{name}.png").exists()))

# %% [markdown]
# ## Samples at the kept checkpoints: the conditioning image, then images generated from it

# %%
fig = figures.image_grid(generate.checkpoint_previews(cfg, n_sources=min(3, cfg.report.classes_in_figures), per_source=4))
plots.save(fig, cfg.paths.figures / "finetune_samples.png")

# %% [markdown]
# ## Summary

# %%
report.summary(cfg, "03")
