from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from mvc.artifacts import load_images, load_splits, read_skipped
from mvc.data import prepare_dataset
from mvc.datasets import DataNotFound
from tests.conftest import smoke_config, write_png


def _cifar(root, hundred: bool, n_train: int = 12, n_test: int = 6):
    rng = np.random.default_rng(0)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)

    def batch(n):
        d = {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n}
        d[b"fine_labels" if hundred else b"labels"] = [i % 3 for i in range(n)]
        return d

    names = ["apple", "bear", "cloud"] if hundred else ["airplane", "automobile", "bird"]
    files = [("train", n_train),
             ("test", n_test)] if hundred else [(f"data_batch_{i}", n_train // 5 + 3) for i in range(1,
                 6)] + [("test_batch", n_test)]
    for name, n in files:
        with open(folder / name, "wb") as fh:
            pickle.dump(batch(n), fh)
    with open(folder / ("meta" if hundred else "batches.meta"), "wb") as fh:
        pickle.dump({b"fine_label_names" if hundred else b"label_names": [s.encode() for s in names]}, fh)
    return names


def _tiny_imagenet(root):
    rng = np.random.default_rng(1)
    base = root / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819"]
    for w in wnids:
        for i in range(8):
            write_png(base / "train" / w / "images" / f"{w}_{i}.JPEG", rng, 64, "JPEG")
    lines = []
    for i in range(6):
        write_png(base / "val" / "images" / f"val_{i}.JPEG", rng, 64, "JPEG")
        lines.append(f"val_{i}.JPEG\t{wnids[i % 2]}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (base / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\n")
    return ["goldfish", "European fire salamander"]


def _caltech(root):
    rng = np.random.default_rng(2)
    for cls in ("accordion", "airplanes", "BACKGROUND_Google"):
        for i in range(9):
            write_png(root / "101_ObjectCategories" / cls / f"image_{i:04d}.jpg", rng, 30, "JPEG")
    return ["accordion", "airplanes"]


def _mri(root):
    rng = np.random.default_rng(3)
    for part, n in (("Training", 8), ("Testing", 3)):
        for cls in ("glioma", "meningioma", "notumor", "pituitary"):
            for i in range(n):
                write_png(root / part / cls / f"{part[:2]}-{cls[:2]}_{i:04d}.jpg", rng, 40, "JPEG")
    return ["glioma", "meningioma", "notumor", "pituitary"]


def _imagefolder(root):
    rng = np.random.default_rng(4)
    for cls in ("cats", "dogs"):
        for i in range(9):
            write_png(root / cls / f"{i}.png", rng, 24)
    return ["cats", "dogs"]


FIXTURES = {"cifar10": (_cifar, False), "cifar100": (_cifar, True), "tiny_imagenet": (_tiny_imagenet, None),
            "caltech101": (_caltech, None), "brain_tumor_mri": (_mri, None), "imagefolder": (_imagefolder, None)}


@pytest.mark.parametrize("dataset", list(FIXTURES))
def test_loader_reads_real_on_disk_format(tmp_path, dataset):
    make, flag = FIXTURES[dataset]
    root = tmp_path / "data"
    root.mkdir()
    names = make(root, flag) if flag is not None else make(root)
    cfg = smoke_config(tmp_path, f"data.dataset={dataset}", f"data.root={root}", "data.classes=null",
                       "data.shots=2", "data.val_per_class=1", "data.pool_per_class=null", "data.test_per_class=null",
                       "data.resolution=16")
    splits = prepare_dataset(cfg, show_progress=False)
    images = load_images(cfg)
    assert images.shape == (len(splits), 16, 16, 3) and images.dtype == np.uint8
    assert sorted(splits["class_name"].unique()) == sorted(n.lower() for n in names) or \
        sorted(splits["class_name"].unique()) == sorted(names)
    counts = splits.groupby(["class_name", "split"]).size().unstack(fill_value=0)
    assert (counts["train"] == 2).all() and (counts["val"] == 1).all() and (counts["test"] >= 1).all()
    if dataset in ("cifar10", "cifar100", "tiny_imagenet", "brain_tumor_mri"):  # official test splits kept as such
        official = splits[splits["split"] == "test"]["source"]
        assert official.str.contains("test|val|Testing").all()


def test_splits_deterministic_disjoint_and_pool_unlabelled_in_training(tmp_path):
    a = prepare_dataset(smoke_config(tmp_path / "a"), show_progress=False)
    b = prepare_dataset(smoke_config(tmp_path / "b"), show_progress=False)
    c = prepare_dataset(smoke_config(tmp_path / "c", "seed=1"), show_progress=False)
    pd.testing.assert_frame_equal(a, b)
    assert not a["source"].equals(c["source"])
    assert a["source"].is_unique  # every image in exactly one split
    assert set(a["split"]) == {"train", "pool", "val", "test"}
    assert (a[a["split"] == "train"].groupby("label").size() == 4).all()
    # the classifier's training data is exactly the train split: no pool image (or label) reaches it
    import torch

    from mvc.classify import load_classification_data
    from mvc.imaging import to_chw

    cfg = smoke_config(tmp_path / "a")
    data = load_classification_data(cfg)
    train = a[a["split"] == "train"]
    assert torch.equal(data.train_x, to_chw(load_images(cfg)[train["image_id"].to_numpy()]))
    assert torch.equal(data.train_y, torch.tensor(train["label"].to_numpy()))
    assert not set(train["image_id"]) & set(a[a["split"] == "pool"]["image_id"])


def test_corrupt_jpeg_is_skipped_and_listed(tmp_path):
    root = tmp_path / "data"
    _imagefolder(root)
    (root / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cfg = smoke_config(tmp_path, "data.dataset=imagefolder", f"data.root={root}", "data.classes=null",
                       "data.shots=2", "data.val_per_class=1", "data.pool_per_class=null", "data.test_per_class=null")
    splits = prepare_dataset(cfg, show_progress=False)
    skipped = read_skipped(cfg)
    assert len(skipped) == 1 and skipped["source"].iloc[0].endswith("broken.jpg")
    assert "broken" not in " ".join(splits["source"])
    assert len(splits) == 18  # every readable image kept
    assert (load_splits(cfg).groupby(["class_name", "split"]).size().loc[("cats", "train")] == 2)


@pytest.mark.parametrize("dataset, needle",
                         [("cifar10", "cifar-10-batches-py"), ("tiny_imagenet", "val_annotations.txt"),
                                             ("caltech101", "101_ObjectCategories"), ("brain_tumor_mri", "Training"),
                                             ("imagefolder", "<class>")])
def test_missing_root_names_layout(tmp_path, dataset, needle):
    cfg = smoke_config(tmp_path, f"data.dataset={dataset}", f"data.root={tmp_path / 'nowhere'}", "data.classes=null")
    with pytest.raises(DataNotFound) as err:
        prepare_dataset(cfg, show_progress=False)
    assert needle in str(err.value) and "nowhere" in str(err.value)
