"""Shared fixtures: the smoke profile in a temporary work folder, run once per session up to any stage."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _libraries_outside_the_collector():
    """Import the libraries every stage uses, then move what exists into the collector's permanent generation
    (`gc.freeze`): the kit's `release_memory` (a full `gc.collect` after each unit of work) then walks only what
    the tests made, not the ~0.6 M objects of torch, diffusers and transformers (0.3-0.5 s a call, 21 calls in a
    paper profile's rehearsal). What the tests create is collected as before."""
    import gc

    import diffusers
    import torchvision  # noqa: F401
    import transformers

    _ = (diffusers.StableDiffusionPipeline, diffusers.StableDiffusionInstructPix2PixPipeline, diffusers.AutoencoderKL,
         diffusers.UNet2DConditionModel, transformers.CLIPTextModel, transformers.BertModel,
         transformers.Blip2ForConditionalGeneration)  # diffusers and transformers import their modules lazily
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


def smoke_config(tmp: Path, *overrides: str):
    from mvc.config import load_config

    return load_config(REPO / "params" / "smoke.yaml",
                       [f"runs_root={tmp / 'runs'}", f"reports_root={tmp / 'reports'}", "device=cpu", *overrides])


def stage_functions() -> dict[str, Callable[..., Any]]:
    """Each stage's name -> its function, in run order."""
    from mvc.pipeline import stage_functions as functions

    return functions()


def run_until(cfg, last: str, **kwargs: Any) -> Any:
    """Run the study's stages in registry order up to and including `last`, each with show_progress=False;
    `kwargs` go to `last` only (e.g. max_steps=2). Returns the last stage's result."""
    from mvc.stages import STAGES

    functions = stage_functions()
    names = [s.name for s in STAGES]
    if last not in names:
        raise ValueError(f"no stage {last!r}; the stages are {', '.join(names)}")
    before = names[: names.index(last)]
    for name in before:
        functions[name](cfg, show_progress=False)
    return functions[last](cfg, show_progress=False, **kwargs)


def smoke_through_backbone(tmp: Path, *overrides: str):
    """A fresh smoke study run through data, caption, embed and backbone: ready to fine-tune."""
    cfg = smoke_config(tmp, *overrides)
    run_until(cfg, "backbone")
    return cfg


@pytest.fixture
def smoke(tmp_path):
    """A fresh smoke configuration whose runs/ and reports/ live in the test's temporary folder."""
    return smoke_config(tmp_path)


@pytest.fixture(scope="session")
def smoke_generated(tmp_path_factory):
    """The smoke study run through `generate` once per session (shared, read-only for the tests)."""
    cfg = smoke_config(tmp_path_factory.mktemp("smoke"))
    run_until(cfg, "generate")
    return cfg


def write_png(path: Path, rng: np.random.Generator, size: int = 20, fmt: str = "PNG") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path, format=fmt)


@pytest.fixture(scope="session")
def tiny_blip2(tmp_path_factory):
    """A random BLIP-2 built from a config and saved with save_pretrained (model and processor), CLIP's vocabulary."""
    from tests.tiny_models import save_tiny_blip2

    return save_tiny_blip2(tmp_path_factory.mktemp("blip2"))


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    """A Stable-Diffusion-shaped pipeline folder (the five parts, tiny, random), as `save_pretrained` writes it."""
    from tests.tiny_models import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


def free_port() -> int:
    """A free local port: two test runs at once must not collide on accelerate's default one."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_processes(*mvc_args: str, timeout: int = 600):
    """`accelerate launch --multi_gpu --num_processes 2 -m mvc ...` over gloo on the CPU, on a free port."""
    import subprocess
    import sys

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", str(port), "-m", "mvc", *mvc_args],
                          capture_output=True, text=True, env=env, timeout=timeout)
