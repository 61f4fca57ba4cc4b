"""Novel combinations of known concepts, for a dataset that declares its factors (`Dataset.factors`, e.g. the
`concepts` testbed): one probe per factor (the judge's network and recipe, without flips, which would change a
position), trained on the unlabelled pool with the factors the dataset knows and scored on the test split; then,
per synthetic set, the share of images whose combination (intended class, the factors the probes read) none of the
unit's labelled shots has: `novel_combinations`. Real pool images of the class (`oracle_real`) show what a
generator that draws every combination would reach; the labelled images themselves reach 0."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from mvc.classifiers import ClassificationData, RunSpec, evaluate, predict_logits, train_classifier
from mvc.config import ClassifyConfig, StudyConfig
from mvc.registry import DATASETS, role_of
from mvc.stages import JUDGE_RECIPE

log = logging.getLogger(__name__)


def known_factors(cfg: StudyConfig, splits: pd.DataFrame) -> pd.DataFrame | None:
    """The dataset's factors of every image of `splits` (a column per factor, in image order), or None where the
    dataset declares none."""
    reader = DATASETS[cfg.data.dataset].factors
    if reader is None:
        return None
    return pd.DataFrame([reader(s) for s in splits["source"]], index=splits.index).drop(columns="shape",
                                                                                          errors="ignore")


class FactorProbes:
    """A classifier per factor, trained on the pool, with its accuracy on the test split."""

    def __init__(self, cfg: StudyConfig, splits: pd.DataFrame, images: np.ndarray, device: str = "cpu"):
        from mvc.imaging import to_chw

        factors = known_factors(cfg, splits)
        self.values = {name: sorted(factors[name].unique()) for name in factors.columns}
        self.device, self.models, self.accuracy = device, {}, {}
        pool, test = (splits["split"] == "pool").to_numpy(), (splits["split"] == "test").to_numpy()
        pool_x, test_x = to_chw(images[splits["image_id"][pool]]), to_chw(images[splits["image_id"][test]])
        recipe = {f: getattr(cfg.classify, f) for f in JUDGE_RECIPE} | {"hflip": False}
        c = ClassifyConfig(**recipe, methods=[role_of("reference")], steps=cfg.metrics.judge_steps,
                           backbone=cfg.metrics.judge_backbone, pretrained=cfg.metrics.judge_backbone != "small_cnn",
                           small_cnn_width=32)
        for name, values in self.values.items():
            code = factors[name].map({v: i for i, v in enumerate(values)}).to_numpy()
            data = ClassificationData(pool_x, torch.tensor(code[pool]), test_x, torch.tensor(code[test]), len(values))
            self.models[name] = train_classifier(data, RunSpec(role_of("reference"), cfg.seed), c,
                                                 cfg.data.resolution, device)
            self.accuracy[name] = evaluate(self.models[name], data.test_x, data.test_y, device)[0]
            log.info("metrics: factor probe %s reads %.3f of the test images", name, self.accuracy[name])

    def read(self, images: torch.Tensor) -> pd.DataFrame:
        """The factors the probes read from uint8 NCHW images."""
        return pd.DataFrame({name: [self.values[name][int(p)] for p in predict_logits(model, images, self.device)
                                    .argmax(1)] for name, model in self.models.items()})


def combinations(labels, factors: pd.DataFrame) -> list[tuple]:
    """(class, factor values...) per image."""
    return [tuple([int(y), *row]) for y, row in zip(labels, factors.itertuples(index=False))]


def novel_share(probes: FactorProbes, images: torch.Tensor, labels, labelled: set[tuple]) -> float:
    """The share of `images` whose (intended class, read factors) is not among the labelled shots' `labelled`."""
    if len(images) == 0:
        return float("nan")
    combos = combinations(labels, probes.read(images))
    return float(np.mean([c not in labelled for c in combos]))
