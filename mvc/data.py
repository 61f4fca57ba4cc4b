"""Datasets in their standard on-disk formats, seeded stratified splits, and the prepared-image cache.

Stage `data` writes `runs/<study>/splits.csv` (image_id, label, class_name, split, source) and
`runs/<study>/images.npy` (uint8, N x H x W x C at the profile's resolution; row = image_id).
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from mvc import state
from mvc.config import DataConfig, StudyConfig
from mvc.io import atomic_path, write_csv
from mvc.paths import resolve_path

log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "pool", "val", "test")
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


class DataNotFound(FileNotFoundError):
    """The data root is missing or not in the expected layout; the message says where to obtain it."""


@dataclass(frozen=True)
class Item:
    source: str  # file path, or "<file>#<index>" for images inside a batch file
    class_dir: str  # class key as the dataset names it (folder, wnid, label name)
    official: str | None = None  # "train" / "test" where the dataset ships a split


class Reader:
    """One dataset format: list its items, read one as a PIL image."""

    layout = ""
    url = ""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.root = resolve_path(cfg.root) if cfg.root else None

    def items(self) -> list[Item]:
        raise NotImplementedError

    def class_order(self, classes: list[str]) -> list[str]:
        """Label order of the class keys (alphabetical unless the dataset has a natural order)."""
        return sorted(classes)

    def read(self, item: Item) -> Image.Image:
        with Image.open(item.source) as img:
            img.load()
            return img.copy()

    def missing(self, what: Path | str) -> DataNotFound:
        return DataNotFound(
            f"{self.cfg.dataset}: expected {what} under data.root={self.cfg.root!r}.\n"
            f"Expected layout:\n{self.layout}\nObtain it from {self.url} and set data.root "
            f"(params file or --set data.root=PATH)."
        )

    def require_root(self) -> Path:
        if self.root is None or not self.root.exists():
            raise self.missing(self.root or "a data root")
        return self.root


def _scan(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())


class DigitsReader(Reader):
    """scikit-learn's 1,797 8x8 handwritten digits (ships inside scikit-learn; offline)."""

    def items(self) -> list[Item]:
        return [Item(f"sklearn-digits#{i}", DIGIT_NAMES[t]) for i, t in enumerate(_digits()[1])]

    def class_order(self, classes: list[str]) -> list[str]:
        return sorted(classes, key=DIGIT_NAMES.index)  # label 0 is "zero"

    def read(self, item: Item) -> Image.Image:
        index = int(item.source.split("#")[1])
        pixels = (_digits()[0][index] * (255.0 / 16.0)).round().astype(np.uint8)  # 0..16 -> 0..255
        return Image.fromarray(pixels, mode="L")


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


class CifarReader(Reader):
    """CIFAR-10/100 as torchvision reads it: pickled python batches."""

    url = "https://www.cs.toronto.edu/~kriz/cifar.html (or set data.download: true)"

    def __init__(self, cfg: DataConfig, hundred: bool):
        super().__init__(cfg)
        self.hundred = hundred
        self.folder = "cifar-100-python" if hundred else "cifar-10-batches-py"
        files = "train, test, meta" if hundred else "data_batch_1..5, test_batch, batches.meta"
        self.layout = f"  <root>/{self.folder}/{{{files}}}"

    def _dir(self) -> Path:
        if self.cfg.download and self.root is not None:
            from torchvision import datasets

            cls = datasets.CIFAR100 if self.hundred else datasets.CIFAR10
            cls(str(self.root), train=True, download=True)
        root = self.require_root()
        folder = root / self.folder if (root / self.folder).is_dir() else root
        return folder

    def items(self) -> list[Item]:
        folder = self._dir()
        if self.hundred:
            batches, meta, key, names_key = [("train", "train"), ("test", "test")], "meta", "fine_labels", "fine_label_names"
        else:
            batches = [(f"data_batch_{i}", "train") for i in range(1, 6)] + [("test_batch", "test")]
            meta, key, names_key = "batches.meta", "labels", "label_names"
        for name in [b for b, _ in batches] + [meta]:
            if not (folder / name).is_file():
                raise self.missing(folder / name)
        names = [n.decode() if isinstance(n, bytes) else n for n in _unpickle(folder / meta)[names_key]]
        out = []
        for name, official in batches:
            labels = _unpickle(folder / name)[key]
            out += [Item(f"{folder / name}#{i}", names[t], official) for i, t in enumerate(labels)]
        return out

    def read(self, item: Item) -> Image.Image:
        path, index = item.source.rsplit("#", 1)
        row = _unpickle(Path(path))["data"][int(index)]
        return Image.fromarray(np.asarray(row, dtype=np.uint8).reshape(3, 32, 32).transpose(1, 2, 0))


@lru_cache(maxsize=8)
def _unpickle(path: Path) -> dict:
    with open(path, "rb") as fh:
        raw = pickle.load(fh, encoding="latin1")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


class TinyImageNetReader(Reader):
    url = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
    layout = ("  <root>/tiny-imagenet-200/train/<wnid>/images/*.JPEG\n"
              "  <root>/tiny-imagenet-200/val/images/*.JPEG and val/val_annotations.txt\n"
              "  <root>/tiny-imagenet-200/words.txt (optional: readable class names)")

    def _dir(self) -> Path:
        root = self.require_root()
        return root / "tiny-imagenet-200" if (root / "tiny-imagenet-200").is_dir() else root

    def items(self) -> list[Item]:
        folder = self._dir()
        train, annotations = folder / "train", folder / "val" / "val_annotations.txt"
        if not train.is_dir():
            raise self.missing(train)
        if not annotations.is_file():
            raise self.missing(annotations)
        out = [Item(str(p), wnid.name, "train") for wnid in sorted(train.iterdir()) if wnid.is_dir()
               for p in _scan(wnid / "images")]
        for line in annotations.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2:
                out.append(Item(str(folder / "val" / "images" / parts[0]), parts[1], "test"))
        return out

    def class_names(self) -> dict[str, str]:
        words = self._dir() / "words.txt"
        if not words.is_file():
            return {}
        pairs = (line.split("\t", 1) for line in words.read_text().splitlines() if "\t" in line)
        return {wnid: name.split(",")[0].strip() for wnid, name in pairs}


class Caltech101Reader(Reader):
    url = "https://data.caltech.edu/records/mzrjq-6wc02"
    layout = "  <root>/101_ObjectCategories/<class>/*.jpg   (BACKGROUND_Google is left out)"

    def items(self) -> list[Item]:
        root = self.require_root()
        candidates = [root / "101_ObjectCategories", root / "caltech101" / "101_ObjectCategories"]
        folder = next((c for c in candidates if c.is_dir()), None)
        if folder is None:
            raise self.missing(candidates[0])
        return [Item(str(p), c.name) for c in sorted(folder.iterdir()) if c.is_dir() and c.name != "BACKGROUND_Google"
                for p in _scan(c)]


class BrainTumorMRIReader(Reader):
    url = "https://www.kaggle.com/datasets/masoudnickparvar/brain-tumor-mri-dataset"
    layout = "  <root>/Training/{glioma,meningioma,notumor,pituitary}/*.jpg\n  <root>/Testing/<same classes>/*.jpg"
    classes = ("glioma", "meningioma", "notumor", "pituitary")

    def items(self) -> list[Item]:
        root = self.require_root()
        out = []
        for part, official in (("Training", "train"), ("Testing", "test")):
            for cls in self.classes:
                folder = root / part / cls
                if not folder.is_dir():
                    raise self.missing(folder)
                out += [Item(str(p), cls, official) for p in _scan(folder)]
        return out


class ImageFolderReader(Reader):
    url = "your own images (torchvision's ImageFolder layout)"
    layout = "  <root>/<class>/*.{jpg,png,...}   (optionally <root>/train/<class>/ and <root>/test/<class>/)"

    def items(self) -> list[Item]:
        root = self.require_root()
        if (root / "train").is_dir() and (root / "test").is_dir():
            parts = [(root / "train", "train"), (root / "test", "test")]
        else:
            parts = [(root, None)]
        out = [Item(str(p), c.name, official) for folder, official in parts
               for c in sorted(folder.iterdir()) if c.is_dir() for p in _scan(c)]
        if not out:
            raise self.missing("class folders with images")
        return out


def build_reader(cfg: DataConfig) -> Reader:
    """The registry: one reader per dataset name."""
    readers = {
        "digits": lambda: DigitsReader(cfg),
        "cifar10": lambda: CifarReader(cfg, hundred=False),
        "cifar100": lambda: CifarReader(cfg, hundred=True),
        "tiny_imagenet": lambda: TinyImageNetReader(cfg),
        "caltech101": lambda: Caltech101Reader(cfg),
        "brain_tumor_mri": lambda: BrainTumorMRIReader(cfg),
        "imagefolder": lambda: ImageFolderReader(cfg),
    }
    return readers[cfg.dataset]()


def to_array(img: Image.Image, resolution: int, channels: int) -> np.ndarray:
    """Centre-crop to a square, resize to `resolution` (bicubic), convert to `channels`: uint8 (H, W, C)."""
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    side = min(w, h)
    if w != h:
        img = img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    if side != resolution:
        img = img.resize((resolution, resolution), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def readable_name(class_dir: str, mapping: dict[str, str]) -> str:
    return mapping.get(class_dir, class_dir.replace("_", " ").replace("-", " ").strip().lower())


Quota = tuple[str, "int | None", "list[int] | None"]  # (split, how many (None: all left), own candidates)


def assign_splits(items: list[Item], cfg: DataConfig, seed: int) -> dict[str, tuple[list[Quota], list[int]]]:
    """Per class, a seeded candidate order: {class: ([(split, quota, own candidates), ...], shared candidates)}.

    Official test items go to `test`; the others fill `test` (if the dataset has none), `val`, `train`
    (`shots` per class) and `pool`, in that order. Candidates, not final: an unreadable item is skipped and
    the next one taken, so quotas stay exact.
    """
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_class.setdefault(item.class_dir, []).append(i)
    has_official_test = any(it.official == "test" for it in items)
    plan = {}
    for cls in sorted(by_class):
        idx = np.array(by_class[cls])[rng.permutation(len(by_class[cls]))].tolist()
        test_idx = [i for i in idx if items[i].official == "test"]
        rest = [i for i in idx if items[i].official != "test"]
        if cfg.max_images_per_class:
            rest, test_idx = rest[: cfg.max_images_per_class], test_idx[: cfg.max_images_per_class]
        n_test = len(test_idx) if has_official_test else max(1, round(cfg.test_fraction * len(rest)))
        if cfg.test_per_class:
            n_test = min(n_test, cfg.test_per_class)
        quotas = [("test", n_test, test_idx if has_official_test else None), ("val", cfg.val_per_class, None),
                  ("train", cfg.shots, None), ("pool", cfg.pool_per_class, None)]
        plan[cls] = (quotas, rest)
    return plan


def prepare_dataset(cfg: StudyConfig, show_progress: bool = True) -> pd.DataFrame:
    """Stage `data`: read, split and cache the dataset; returns the splits table."""
    paths = cfg.paths
    outputs = [paths.splits, paths.images, paths.skipped]
    if not state.prepare(cfg, "data", outputs):
        return load_splits(cfg)
    start = time.time()
    reader = build_reader(cfg.data)
    items = reader.items()
    if cfg.data.classes:
        unknown = sorted(set(cfg.data.classes) - {it.class_dir for it in items})
        if unknown:
            raise ValueError(f"data.classes: {unknown} not found in {cfg.data.dataset}; "
                             f"available: {sorted({it.class_dir for it in items})[:20]}")
        items = [it for it in items if it.class_dir in cfg.data.classes]
    names = {**getattr(reader, "class_names", dict)(), **cfg.data.class_names}
    plan = assign_splits(items, cfg.data, cfg.seed)
    classes = reader.class_order(list(plan))
    rows, arrays, skipped = [], [], []
    bar = tqdm(total=sum(len(r) + sum(len(o or []) for _, _, o in q) for q, r in plan.values()), desc="data: reading images", disable=not show_progress)
    for label, cls in enumerate(classes):
        quotas, rest = plan[cls]
        queue = list(rest)
        for split, quota, own in quotas:
            source = list(own) if own is not None else queue
            taken = 0
            while source and (quota is None or taken < quota):
                i = source.pop(0)
                bar.update(1)
                try:
                    arr = to_array(reader.read(items[i]), cfg.data.resolution, cfg.data.channels)
                except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
                    skipped.append({"source": items[i].source, "error": f"{type(err).__name__}: {err}"})
                    continue
                rows.append({"image_id": len(arrays), "label": label, "class_name": readable_name(cls, names),
                             "class_dir": cls, "split": split, "source": items[i].source})
                arrays.append(arr)
                taken += 1
    bar.close()
    if skipped:
        log.warning("data: skipped %d unreadable image(s); listed in %s", len(skipped), paths.skipped)
    if not rows:
        raise DataNotFound(f"{cfg.data.dataset}: no readable images found under {cfg.data.root}")
    frame = pd.DataFrame(rows)
    with atomic_path(paths.images, suffix=".npy") as tmp:
        np.save(tmp, np.stack(arrays))
    write_csv(paths.skipped, pd.DataFrame(skipped, columns=["source", "error"]))
    write_csv(paths.splits, frame)
    state.mark_done(cfg, "data", time.time() - start, {"images": len(frame), "skipped": len(skipped)})
    return frame


def load_splits(cfg: StudyConfig) -> pd.DataFrame:
    state.require(cfg, "data", [cfg.paths.splits, cfg.paths.images])
    return pd.read_csv(cfg.paths.splits, keep_default_na=False)


def load_images(cfg: StudyConfig) -> np.ndarray:
    """All prepared images, uint8 (N, H, W, C), memory-mapped."""
    state.require(cfg, "data", [cfg.paths.images])
    return np.load(cfg.paths.images, mmap_mode="r")


def read_skipped(cfg: StudyConfig) -> pd.DataFrame:
    """Images that could not be read, with the error (empty when none)."""
    return pd.read_csv(cfg.paths.skipped, keep_default_na=False)


def class_names(splits: pd.DataFrame) -> list[str]:
    """Readable class names indexed by label."""
    return splits.drop_duplicates("label").sort_values("label")["class_name"].tolist()


def split_summary(splits: pd.DataFrame) -> pd.DataFrame:
    """Images per class and split."""
    table = splits.pivot_table(index="class_name", columns="split", values="image_id", aggfunc="count", fill_value=0)
    return table.reindex(columns=[s for s in SPLITS if s in table.columns])
