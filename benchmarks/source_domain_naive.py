"""Does the digits backbone draw the named digit before fine-tuning? Pretrains it (study `bbexp`) with the given
overrides, samples 3 naive images per labelled image (the naive set's prompts, seeds and guidance) and judges them
with an RBF SVM trained on printed digits (the source domain) and one trained on handwritten val + pool digits.

    python benchmarks/source_domain_naive.py [--set-style overrides, e.g. backbone.surrogate.source_per_class=600]

Results: benchmarks/surrogate_recipes.md, "The source domain".
"""
import subprocess
import sys

import numpy as np
import torch
from sklearn.svm import SVC

from mvc import artifacts
from mvc.components import load_backbone
from mvc.config import load_config
from mvc.generate import item_seed, mixes_of
from mvc.imaging import tensor_to_images
from mvc.sampling import initial_noise, make_scheduler, sample
from mvc.source_domains import printed_digits

over = ["study=bbexp"] + sys.argv[1:]
for st in ("data", "caption", "embed", "backbone"):
    subprocess.run([sys.executable, "-m", "mvc", st, "params/digits.yaml"] + [f"--set={o}" for o in over], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
cfg = load_config("params/digits.yaml", over)
g = cfg.generate
emb = artifacts.load_caption_embeddings(cfg)
bb = load_backbone(cfg.paths.backbone)
rows = np.repeat(np.arange(len(emb.labels)), 3)
seeds = [item_seed(g.seed, "coarse", int(r), j % 3) for j, r in enumerate(rows)]
xs = []
with torch.no_grad():
    for lo in range(0, len(rows), 100):
        r, s = rows[lo:lo+100], seeds[lo:lo+100]
        text = mixes_of(emb, r, s, "coarse", g.mixing)
        noise = initial_noise(s, (bb.unet.config.out_channels, bb.unet.config.sample_size, bb.unet.config.sample_size))
        x = sample(bb.unet.eval(), bb.vae.eval(), make_scheduler(g.scheduler, bb.scheduler.config), noise, text,
                   emb.empty, None, steps=g.steps, s_text=g.naive_guidance)
        xs.append(tensor_to_images(x))
x = np.concatenate(xs)
y = emb.labels[rows]
splits, images = artifacts.load_splits(cfg), artifacts.load_images(cfg)
names = artifacts.class_names(splits)


def f(a):
    return a.astype(np.float32).mean(-1).reshape(len(a), -1) / 255


src, sy = printed_digits(names, 100, 16, 0)
tgt = splits[splits["split"].isin(["val", "pool"])]
src_judge = SVC(gamma="scale").fit(f(src), sy)
tgt_judge = SVC(gamma="scale").fit(f(images[tgt.image_id.to_numpy()]), tgt.label)
print(over, "naive: source-judge fidelity", (src_judge.predict(f(x)) == y).mean().round(3),
      "target-judge fidelity", (tgt_judge.predict(f(x)) == y).mean().round(3), "mean intensity", x.mean().round(1))

