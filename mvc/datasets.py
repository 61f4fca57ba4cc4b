"""Dataset formats as they lie on disk: scikit-learn's digits, CIFAR python batches, Tiny ImageNet, Caltech101,
the brain-tumour MRI set, and torchvision's ImageFolder. A `Reader` lists a dataset's items and reads one."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from mvc.paths import resolve_path

if TYPE_CHECKING:
    from mvc.config import DataConfig

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


class DataNotFound(FileNotFoundError):
    """The data root is missing or not in the expected layout; the message says where to obtain it."""


@dataclass(frozen=True)
class Item:
    source: str  # file path, or "<file>#<index>" for images inside a batch file
    class_dir: str  # class key as the dataset names it (folder, wnid, label name)
    official: str | None = None  # "train" / "test" where the dataset ships a split
    labellable: bool = True  # may be a labelled shot (a testbed draws its shots from some factor combinations only)


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
            batches = [("train", "train"), ("test", "test")]
            meta, key, names_key = "meta", "fine_labels", "fine_label_names"
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
