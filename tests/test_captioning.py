from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mvc.captioners import AttributeCaptioner, Blip2Captioner
from mvc.captioning import caption_dataset
from mvc.data import prepare_dataset
from mvc.io import part_files


def _digit(thick: bool = False, slant: float = 0.0, shift: int = 0, size: int = 16) -> np.ndarray:
    img = np.zeros((size, size, 3), np.uint8)
    w = 6 if thick else 1
    for y in range(3, 13):
        x = int(round(7 + slant * (8 - y))) + shift
        img[y, x: x + w] = 255
    return img


def test_attribute_captions_follow_measured_attributes():
    cap = AttributeCaptioner()
    base = _digit()
    assert cap([base])[0] == cap([base.copy()])[0]  # identical images, identical captions
    assert "thin strokes" in cap([base])[0] and "thick strokes" in cap([_digit(thick=True)])[0]
    assert "upright" in cap([base])[0] and "slanted right" in cap([_digit(slant=0.6)])[0]
    assert "left" in cap([_digit(shift=-5)])[0] and "right in the frame" in cap([_digit(shift=5)])[0]
    red = np.zeros((16, 16, 3), np.uint8)
    red[4:12, 4:12] = (220, 20, 20)
    assert "red" in cap([red])[0]
    assert len({cap([im])[0] for im in (base, _digit(thick=True), _digit(slant=0.6), _digit(shift=5))}) == 4


def test_interrupted_captioning_resumes_without_loss_or_duplicates(smoke):
    prepare_dataset(smoke, show_progress=False)
    smoke = smoke.model_copy(update={"caption": smoke.caption.model_copy(update={"batch_size": 7})})
    partial = caption_dataset(smoke, show_progress=False, max_batches=2)
    assert partial is None  # stopped early: not marked done
    [part] = part_files(smoke.paths.captions)
    assert len(pd.read_csv(part)) == 14 and not smoke.paths.captions.exists()
    with open(part, "a") as fh:  # a kill in the middle of writing a row
        fh.write("999,train,0,half a capt")
    full = caption_dataset(smoke, show_progress=False)
    splits = pd.read_csv(smoke.paths.splits)
    expected = splits[splits["split"].isin(smoke.caption.splits)]["image_id"]
    assert sorted(full["image_id"]) == sorted(expected) and not part_files(smoke.paths.captions)
    assert full["image_id"].is_unique
    assert full["text"].str.startswith("a photo of the digit ").all()
    names = dict(zip(splits["image_id"], splits["class_name"]))
    assert all(t.startswith(f"a photo of the digit {names[i]}, ") for i, t in zip(full["image_id"], full["text"]))


def test_blip2_path_end_to_end(smoke, tiny_blip2):
    cap = Blip2Captioner(str(tiny_blip2), question=None, max_new_tokens=5)
    images = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
    out = cap(images)
    assert len(out) == 3 and all(isinstance(c, str) and c for c in out)
    assert cap(images) == out  # greedy decoding is deterministic
    prepare_dataset(smoke, show_progress=False)
    cfg = smoke.model_copy(update={"caption": smoke.caption.model_copy(update={"backend": "blip2",
                                                                               "model": str(tiny_blip2),
                                                                                "max_new_tokens": 4,
                                                                               "batch_size": 16})})
    frame = caption_dataset(cfg, show_progress=False)
    assert len(frame) == (cfg.data.shots + cfg.data.pool_per_class) * 3


def test_missing_blip2_model_says_how_to_fetch(tmp_path):
    from mvc.components import ModelFolderError

    with pytest.raises(ModelFolderError) as err:
        Blip2Captioner(str(tmp_path / "no-such-blip2"))
    assert "no-such-blip2" in str(err.value)
    with pytest.raises(ModelFolderError) as err:
        Blip2Captioner("Salesforce/blip2-not-cached-anywhere")
    assert "huggingface-cli download" in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)
