"""The study runner: executes the numbered notebooks through papermill and records provenance."""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import threading
import time
from importlib import metadata
from pathlib import Path

import psutil
from tqdm.auto import tqdm

from mvc import state
from mvc.config import StudyConfig, load_config
from mvc.io import atomic_path, write_json
from mvc.paths import NOTEBOOKS_DIR, REPO_ROOT, resolve_path

log = logging.getLogger(__name__)

NOTEBOOKS = {
    "01": "01_data_preparation.ipynb",
    "02": "02_captioning.ipynb",
    "03": "03_mvc_finetuning.ipynb",
    "04": "04_generation.ipynb",
    "05": "05_classification.ipynb",
    "06": "06_figures_tables.ipynb",
}
NOTEBOOK_STAGES = {
    "01": ["data"], "02": ["caption", "embed"], "03": ["backbone", "finetune"],
    "04": ["generate", "metrics"], "05": ["classify"], "06": ["report"],
}
STAGE_NOTEBOOK = {stage: NOTEBOOKS[nb] for nb, stages in NOTEBOOK_STAGES.items() for stage in stages}
PACKAGES = ["mvc", "torch", "torchvision", "diffusers", "transformers", "accelerate", "open_clip_torch", "timm",
            "torchmetrics", "numpy", "pandas", "scikit-learn", "papermill", "pydantic"]


def parse_stages(text: str | None) -> list[str]:
    """'01,03-05' -> ['01', '03', '04', '05']; None -> all."""
    if not text:
        return list(NOTEBOOKS)
    out: list[str] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"--stages {text!r}: expected numbers like 01,03-05 (allowed 01..06)") from None
        for n in range(a, b + 1):
            key = f"{n:02d}"
            if key not in NOTEBOOKS:
                raise ValueError(f"--stages {text!r}: no notebook {key} (allowed 01..06)")
            if key not in out:
                out.append(key)
    return out


class PeakMemory:
    """Peak resident memory of this process and its children (the notebook kernel), sampled in a thread."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            try:
                total = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"cpu: {platform.processor() or platform.machine()}, {psutil.cpu_count()} cores"


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_provenance(cfg: StudyConfig, stages: dict[str, dict], params_path: Path, overrides: list[str]) -> Path:
    """`reports/<study>/provenance.json`: params, versions, git revision, device, seeds, per-stage timings."""
    path = cfg.paths.provenance
    old = json.loads(path.read_text()) if path.exists() else {}
    merged = {**old.get("stages", {}), **stages}
    write_json(path, {
        "study": cfg.study, "params_file": str(params_path), "overrides": overrides,
        "params": cfg.model_dump(mode="json"),
        "stage_hashes": {s: cfg.stage_hash(s) for s in state.STAGES},
        "packages": _versions(), "python": platform.python_version(), "git_revision": _git_revision(),
        "device": _device(), "host": platform.node(),
        "seeds": {"study": cfg.seed, "finetune": cfg.finetune.seed, "generate": cfg.generate.seed,
                  "classify": cfg.classify.seeds},
        "stages": dict(sorted(merged.items())),
        "total_wall_s": round(sum(s.get("wall_s", 0) for s in merged.values()), 1),
        "peak_rss_mb": max((s.get("peak_rss_mb", 0) for s in merged.values()), default=0),
    })
    return path


def run_notebook(nb: str, params_path: Path, overrides: list[str], output: Path) -> None:
    """Execute one numbered notebook with papermill, writing the executed copy atomically."""
    import papermill as pm

    from papermill.exceptions import PapermillExecutionError

    failed = output.with_name(output.stem + ".failed.ipynb")
    with atomic_path(output) as tmp:
        try:
            pm.execute_notebook(
                str(NOTEBOOKS_DIR / NOTEBOOKS[nb]), str(tmp),
                parameters={"params": str(params_path), "overrides": list(overrides)},
                kernel_name="python3", cwd=str(NOTEBOOKS_DIR), progress_bar=False,
            )
        except PapermillExecutionError as err:
            tmp.replace(failed)
            raise RuntimeError(f"notebook {NOTEBOOKS[nb]} failed: {err.ename}: {err.evalue} "
                               f"(executed copy with the traceback: {failed})") from None
    failed.unlink(missing_ok=True)


def run_study(params: str | Path, stages: str | None = None, overrides: list[str] | None = None,
              force: bool = False) -> dict[str, dict]:
    """`mvc study`: run the chosen notebooks in order, skipping those whose stages are up to date."""
    overrides = list(overrides or [])
    params_path = resolve_path(params).resolve()
    cfg = load_config(params_path, overrides)
    chosen = parse_stages(stages)
    report = {}
    for nb in tqdm(chosen, desc=f"study {cfg.study}", unit="notebook"):
        output = cfg.paths.executed_notebooks / NOTEBOOKS[nb]
        up_to_date = all(state.is_done(cfg, s) for s in NOTEBOOK_STAGES[nb]) and output.exists()
        if up_to_date and not force:
            log.info("notebook %s: stages %s up to date, skipped", nb, NOTEBOOK_STAGES[nb])
            report[nb] = {"skipped": True}
            continue
        start = time.time()
        with PeakMemory() as mem:
            run_notebook(nb, params_path, overrides, output)
        report[nb] = {"notebook": NOTEBOOKS[nb], "wall_s": round(time.time() - start, 1),
                      "peak_rss_mb": round(mem.peak / 2**20), "skipped": False,
                      "stage_seconds": {s: state.stage_info(cfg, s).get("seconds") for s in NOTEBOOK_STAGES[nb]}}
        log.info("notebook %s done in %.1f s, peak %d MB", nb, report[nb]["wall_s"], report[nb]["peak_rss_mb"])
        write_provenance(cfg, {k: v for k, v in report.items() if not v.get("skipped")}, params_path, overrides)
    if not cfg.paths.provenance.exists():
        write_provenance(cfg, {}, params_path, overrides)
    if state.is_done(cfg, "report") and any(not v.get("skipped") for v in report.values()):
        from mvc.report import write_index

        write_index(cfg)  # again, now that every executed notebook and the provenance are final
    return report
