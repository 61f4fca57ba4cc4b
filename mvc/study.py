"""The study runner: executes the numbered notebooks through papermill, shows the running stage's progress in
the terminal, and records provenance."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import psutil

from mvc import state
from mvc.config import StudyConfig, load_config
from mvc.io import atomic_path, ensure_writable, write_json
from mvc.lock import LOCK_ENV, study_lock
from mvc.paths import NOTEBOOKS_DIR, REPO_ROOT, resolve_path, shown
from mvc.progress import PROGRESS_ENV, bar
from mvc.resources import check_memory
from mvc.stages import NOTEBOOKS, STAGES, notebook_stages
from mvc.state import FORCE_ENV
from mvc.weights import require_weights

log = logging.getLogger(__name__)

PACKAGES = ["mvc", "torch", "torchvision", "diffusers", "transformers", "accelerate", "open_clip_torch", "timm",
            "torchmetrics", "numpy", "pandas", "scikit-learn", "papermill", "pydantic"]


class NotebookFailed(RuntimeError):
    """A notebook raised an error or its kernel died; the message says which and where the executed copy is."""


def parse_notebooks(text: str | None) -> list[str]:
    """'01,03-05' -> ['01', '03', '04', '05']; None -> all. Empty or reversed ranges are errors."""
    if not text:
        return list(NOTEBOOKS)
    out: list[str] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"--notebooks {text!r}: expected numbers like 01,03-05 (allowed 01..06)") from None
        if b < a:
            raise ValueError(f"--notebooks {text!r}: the range {part.strip()} is reversed; "
                             f"write it low-high, e.g. {b:02d}-{a:02d}")
        for n in range(a, b + 1):
            key = f"{n:02d}"
            if key not in NOTEBOOKS:
                raise ValueError(f"--notebooks {text!r}: no notebook {key} (allowed 01..06)")
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


class StageProgress:
    """Shows, in the terminal, the progress that the running notebook's stages write to a file."""

    def __init__(self, path: Path, notebook: str, interval: float = 0.5, enabled: bool = True):
        self.path, self.notebook, self.interval, self.enabled = path, notebook, interval, enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._bar = None
        self._desc = None

    def _show(self, info: dict) -> None:
        desc = f"{self.notebook} {info.get('desc', '')}".strip()
        if self._bar is None or desc != self._desc:
            if self._bar is not None:
                self._bar.close()
            # the kernel's counts, mirrored: the rate is the kernel's (in its record), not this bar's
            counted = ("{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}]" if sys.stderr.isatty() else
                       "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}]")
            shape = {"bar_format": counted} if info.get("total") else {}
            self._bar = bar(total=info.get("total"), desc=desc, unit=info.get("unit", "it"), leave=False, **shape)
            self._desc = desc
        self._bar.n = info.get("n", 0)
        self._bar.refresh()

    def _run(self) -> None:
        last = None
        while not self._stop.wait(self.interval):
            try:
                info = json.loads(self.path.read_text())
            except (OSError, ValueError):
                continue
            if info != last:
                self._show(info)
                last = info

    def __enter__(self) -> StageProgress:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()
        if self._bar is not None:
            self._bar.close()


def git_revision(own_report: Path | None = None) -> str:
    """HEAD's commit, with `+dirty` when a tracked file differs from it; the study's own report folder, which the
    run is writing, does not count (a committed report regenerated from a clean tree is not dirty)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
        exclude = [f":(exclude){own_report.resolve().relative_to(REPO_ROOT)}"] if own_report is not None and \
            own_report.resolve().is_relative_to(REPO_ROOT) else []
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *exclude],
                               cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _device() -> str:
    import torch  # deferred: the runner itself needs torch only to describe the device

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"cpu: {cpu_model()}, {psutil.cpu_count()} cores"


def cpu_model() -> str:
    """The CPU's model name and the flags that change CPU speed most here (AVX512-BF16, AMX, AVX2), from
    /proc/cpuinfo where there is one: timings are compared on one CPU only."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    shown = [f for f, key in (("AVX512-BF16", "avx512_bf16"), ("AMX", "amx_bf16"), ("AVX2", "avx2")) if key in flags]
    return f"{name} ({', '.join(shown) or 'no AVX2'})"


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_provenance(cfg: StudyConfig, stages: dict[str, dict], params_path: Path, overrides: list[str]) -> Path:
    """`reports/<study>/provenance.json`: params, versions, git revision, device, seeds, per-notebook timings."""
    path = cfg.paths.provenance
    old = json.loads(path.read_text()) if path.exists() else {}
    merged = {**old.get("stages", {}), **stages}
    write_json(path, {
        "study": cfg.study, "params_file": shown(params_path), "overrides": overrides,
        "params": cfg.model_dump(mode="json"),
        "stage_hashes": {s.name: cfg.stage_hash(s.name) for s in STAGES},
        "packages": _versions(), "python": platform.python_version(), "git_revision": git_revision(cfg.paths.report),
        "device": _device(), "host": platform.node(),
        "seeds": {"study": cfg.seed, "finetune": cfg.finetune.seed, "generate": cfg.generate.seed,
                  "classify": cfg.classify.seeds},
        "stages": dict(sorted(merged.items())),
        "total_wall_s": round(sum(s.get("wall_s", 0) for s in merged.values()), 1),
        "peak_rss_mb": max((s.get("peak_rss_mb", 0) for s in merged.values()), default=0),
    })
    return path


def scrub_paths(notebook: Path) -> None:
    """Replace the repository's absolute location in an executed notebook with `.` (nothing machine-specific)."""
    text = notebook.read_text()
    root = str(REPO_ROOT)
    cleaned = text.replace(root + "/", "").replace(root, ".")
    if cleaned != text:
        notebook.write_text(cleaned)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Temporary notebooks that a killed run left behind (`.<name>.ipynb.*`)."""
    stale = [p for p in folder.glob(".*.ipynb*") if p.is_file()] if folder.exists() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _kernel_died_message(nb: str, peak_mb: int, log_file: Path) -> str:
    total = psutil.virtual_memory().total / 2**20
    return (f"notebook {NOTEBOOKS[nb]}: the kernel died, most likely killed by the operating system for lack of "
            f"memory (peak seen: {peak_mb} MB of {total:.0f} MB). Lower what the stage holds in memory, e.g. "
            f"finetune.batch_size, generate.batch_size, classify.batch_size, backbone.resolution or "
            f"data.resolution, and run again: finished stages are kept. The kernel's own log: {log_file}")


def _kernel_manager(log_file: Path) -> type:
    """A jupyter kernel manager whose kernel writes its own messages (its warnings, a traceback when it is
    interrupted) to `log_file` instead of the terminal."""
    from jupyter_client.manager import AsyncKernelManager  # deferred with papermill, below

    async def start_kernel(self, **kw):
        log_file.parent.mkdir(parents=True, exist_ok=True)
        kw.setdefault("stderr", open(log_file, "ab"))  # noqa: SIM115 - the kernel process owns it
        return await AsyncKernelManager.start_kernel(self, **kw)

    return type("LoggedKernelManager", (AsyncKernelManager,), {"start_kernel": start_kernel})


def run_notebook(nb: str, params_path: Path, overrides: list[str], output: Path, progress_file: Path,
                 memory: PeakMemory | None = None, force: bool = False) -> None:
    """Execute one numbered notebook with papermill, writing the executed copy atomically."""
    import papermill as pm  # deferred: papermill is slow to import and only `mvc study` needs it
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    failed = output.with_name(output.stem + ".failed.ipynb")
    kernel_log = output.parent / f".kernel-{nb}.log"
    # None: unset (MPLBACKEND, so that the kernel plots inline); the kernel inherits the runner's environment
    env = {PROGRESS_ENV: str(progress_file), "MPLBACKEND": None, FORCE_ENV: "1" if force else None}
    saved = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        with atomic_path(output) as tmp:
            try:
                pm.execute_notebook(
                    str(NOTEBOOKS_DIR / NOTEBOOKS[nb]), str(tmp),
                    parameters={"params": shown(params_path), "overrides": list(overrides)},
                    kernel_name="python3", cwd=str(NOTEBOOKS_DIR), progress_bar=False,
                    kernel_manager_class=_kernel_manager(kernel_log),
                )
            except PapermillExecutionError as err:
                scrub_paths(tmp)
                tmp.replace(failed)
                raise NotebookFailed(f"notebook {NOTEBOOKS[nb]} failed: {err.ename}: {err.evalue} "
                                     f"(executed copy with the traceback: {failed})") from None
            except DeadKernelError:
                raise NotebookFailed(_kernel_died_message(nb, round((memory.peak if memory else 0) / 2**20),
                                                          kernel_log)) from None
            scrub_paths(tmp)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    failed.unlink(missing_ok=True)


def run_study(params: str | Path, notebooks: str | None = None, overrides: list[str] | None = None,
              force: bool = False, show_progress: bool = True) -> dict[str, dict]:
    """`mvc study`: run the chosen notebooks (e.g. '01,03-05'; default all) in order, skipping those whose stages
    are up to date."""
    overrides = list(overrides or [])
    params_path = resolve_path(params).resolve()
    cfg = load_config(params_path, overrides)
    chosen = parse_notebooks(notebooks)
    require_weights(cfg)  # before any work: a study whose pretrained weights are not cached, naming each missing id
    check_memory(cfg)  # and a stage that cannot fit the card (or this CPU), naming the setting
    ensure_writable(cfg.paths.run, "runs_root")
    ensure_writable(cfg.paths.report, "reports_root")
    with study_lock(cfg.paths.run):
        lock_file = cfg.paths.run / ".lock"
        os.environ[LOCK_ENV] = f"{lock_file}:{lock_file.read_text().strip()}"
        try:
            if cfg.select.run_first:
                params_path, cfg = select_first(cfg, params_path, overrides)
            return _run_notebooks(cfg, chosen, params_path, overrides, force, show_progress)
        finally:
            os.environ.pop(LOCK_ENV, None)


def select_first(cfg: StudyConfig, params_path: Path, overrides: list[str]) -> tuple[Path, StudyConfig]:
    """`select.run_first`: the stages the selection shares with the study (run in the study, then adopted by the
    selection), the selection (it resumes from its finished trials), and the study's config from the params file it
    writes, `reports/<study>/selection/selected.yaml` (the same overrides on top)."""
    from mvc.pipeline import stage_function  # deferred: it imports every stage's module
    from mvc.select import SHARED_STAGES, run_selection

    for name in SHARED_STAGES:
        stage_function(name)(cfg, show_progress=False)
    log.info("select.run_first: choosing the recipe on the validation split (budget %g minutes)",
             cfg.select.budget_minutes)
    out = run_selection(cfg, params_path, cfg.paths.report / "selection" / "selected.yaml", overrides=overrides)
    print(f"recipe chosen on the validation split: {out} (the log: {out.parent / 'selection.md'})", file=sys.stderr)
    return out, load_config(out, overrides)


def _run_notebooks(cfg: StudyConfig, chosen: list[str], params_path: Path, overrides: list[str], force: bool,
                   show_progress: bool) -> dict[str, dict]:
    report = {}
    cfg.paths.executed_notebooks.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temporaries(cfg.paths.executed_notebooks):
        log.info("removed %s, left by an interrupted run", stale.name)
    for nb in bar(chosen, desc=f"study {cfg.study}", unit="notebook", disable=not show_progress):
        output = cfg.paths.executed_notebooks / NOTEBOOKS[nb]
        nb_stages = notebook_stages(nb)
        up_to_date = all(state.is_done(cfg, s) for s in nb_stages) and output.exists()
        if up_to_date and not force:
            log.info("notebook %s: stages %s up to date, skipped", nb, nb_stages)
            report[nb] = {"skipped": True}
            continue
        start = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            progress_file = Path(tmp) / "progress.json"
            with PeakMemory() as mem, StageProgress(progress_file, nb, enabled=show_progress):
                run_notebook(nb, params_path, overrides, output, progress_file, mem, force)
        report[nb] = {"notebook": NOTEBOOKS[nb], "wall_s": round(time.time() - start, 1),
                      "peak_rss_mb": round(mem.peak / 2**20), "skipped": False,
                      "stage_seconds": {s: state.stage_info(cfg, s).get("seconds") for s in nb_stages}}
        log.info("notebook %s done in %.1f s, peak %d MB", nb, report[nb]["wall_s"], report[nb]["peak_rss_mb"])
        write_provenance(cfg, {k: v for k, v in report.items() if not v.get("skipped")}, params_path, overrides)
    if not cfg.paths.provenance.exists():
        write_provenance(cfg, {}, params_path, overrides)
    if state.is_done(cfg, "report") and any(not v.get("skipped") for v in report.values()):
        from mvc.report import write_index  # deferred: the report's plotting stack is needed only here

        write_index(cfg)  # again, now that every executed notebook and the provenance are final
    for warning in state.stage_info(cfg, "report").get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)  # the report's headline, where it is seen at the end
    return report
