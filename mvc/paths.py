"""Where things live, derived from the package location, never from the current directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PARAMS_DIR = REPO_ROOT / "params"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


def resolve_path(path: str | Path) -> Path:
    """An absolute path; relative ones are taken from the repository root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else (REPO_ROOT / path)


def shown(path: str | Path) -> str:
    """A path as reports and notebooks show it: relative to the repository when inside it."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class StudyPaths:
    """Files of one study: `runs/<study>/` (work, git-ignored) and `reports/<study>/` (results)."""

    run: Path
    report: Path
    unit: str | None = None  # a unit of the generative pipeline other than the main one (`StudyConfig.unit`)

    @classmethod
    def for_study(cls, name: str, runs_root: Path | None = None, reports_root: Path | None = None,
                  unit: str | None = None) -> StudyPaths:
        """The folders of study `name`; each must lie inside its root (a name cannot point elsewhere)."""
        runs, reports = runs_root or REPO_ROOT / "runs", reports_root or REPO_ROOT / "reports"
        paths = cls(run=runs / name, report=reports / name, unit=unit)
        for folder, root in ((paths.run, runs), (paths.report, reports)):
            if folder.resolve().parent != root.resolve():
                raise ValueError(f"study name {name!r} resolves to {folder.resolve()}, outside {root}; "
                                 "use a plain name")
        return paths

    # runs/<study>/
    @property
    def splits(self) -> Path:
        return self.run / "splits.csv"

    @property
    def images(self) -> Path:
        return self.run / "images.npy"

    @property
    def skipped(self) -> Path:
        return self.run / "skipped.csv"

    @property
    def captions(self) -> Path:
        return self.run / "captions.csv"

    @property
    def embeddings(self) -> Path:
        return self.run / "embeddings"

    @property
    def backbone(self) -> Path:
        return self.run / "backbone"

    @property
    def backbone_loss(self) -> Path:
        return self.run / "backbone_loss.csv"

    # the fine-tuned models (`mvc.registry.MODELS`) and synthetic sets: the main unit's at the top, the other
    # units' under units/<stage>/<unit>/
    def model(self, name: str, stage: str) -> Path:
        """The folder of fine-tuned model `name` (trained by `stage`) of this unit."""
        return self.run / name if self.unit is None else self.model_units(stage) / self.unit / "model"

    def model_work(self, stage: str) -> Path:
        """The work folder (loss, checkpoints, summary) of the fine-tuning `stage` of this unit."""
        return self.run / stage if self.unit is None else self.model_units(stage) / self.unit / "work"

    def model_units(self, stage: str) -> Path:
        """Where the units other than the main one keep the models of `stage`."""
        return self.run / "units" / stage

    @property
    def mvc_model(self) -> Path:
        return self.model("mvc", "finetune")

    @property
    def finetune_work(self) -> Path:
        return self.model_work("finetune")

    @property
    def synthetic(self) -> Path:
        return self.run / "synthetic" if self.unit is None else self.generate_units / self.unit

    @property
    def generate_units(self) -> Path:
        return self.run / "units" / "generate"

    @property
    def finetune_previews(self) -> Path:
        """Images generated at each kept checkpoint of the main MVC fine-tuning (drawn by the generate stage)."""
        return self.run / "finetune_previews.png"

    @property
    def results(self) -> Path:
        return self.run / "results.csv"

    @property
    def pseudo_labels(self) -> Path:
        """What self-training's teacher labelled in the pool, one JSON per unit (`classify.pseudo_labelled_pool`)."""
        return self.run / "pseudo_labels"

    @property
    def image_metrics(self) -> Path:
        return self.run / "image_metrics.csv"

    @property
    def judge(self) -> Path:
        """The trained judges of label fidelity, one file per network and recipe (`mvc.judge`)."""
        return self.run / "judge"

    @property
    def stages(self) -> Path:
        return self.run / "stages"

    @property
    def finetune_loss(self) -> Path:
        return self.finetune_work / "loss.csv"

    @property
    def checkpoints(self) -> Path:
        return self.finetune_work / "checkpoints"

    @property
    def index(self) -> Path:
        return self.report / "index.html"

    # reports/<study>/
    @property
    def figures(self) -> Path:
        return self.report / "figures"

    @property
    def tables(self) -> Path:
        return self.report / "tables"

    @property
    def executed_notebooks(self) -> Path:
        return self.report / "notebooks"

    @property
    def provenance(self) -> Path:
        return self.report / "provenance.json"


class ModelFolderError(FileNotFoundError):
    """A model folder that is missing, incomplete or unreadable; the message names what is wrong."""


def names_a_folder(model: str) -> bool:
    """Whether a model field names a local folder (it exists, or reads as a path) rather than a hub id."""
    return resolve_path(model).exists() or model.startswith((".", "/", "~"))


def hub_error(model: str, field: str, err: Exception) -> Exception:
    """A clear error for a model that could not be loaded from a folder or the hub."""
    path = resolve_path(model)
    if names_a_folder(model):
        return ModelFolderError(f"{field}: could not load the model folder {path}: {err}. "
                                "Point it at a folder written by `save_pretrained`.")
    return ModelFolderError(
        f"{field}: '{model}' is not a local folder and could not be loaded from the Hugging Face Hub "
        f"(offline or not cached): {str(err).splitlines()[0]}. Fetch it on a connected machine with "
        f"`huggingface-cli download {model}` (it lands in the HF cache), then run with HF_HUB_OFFLINE=1, "
        f"or set {field} to a local folder.")
