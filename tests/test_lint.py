"""The code passes the linter configured in pyproject.toml ([tool.ruff]: pyflakes, pycodestyle with lines of at most
120 characters, import order, pyupgrade, bugbear), so `make test` is also the lint."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(REPO)], capture_output=True,
                         text=True, cwd=REPO)
    assert out.returncode == 0, f"ruff check found problems (fix, or `ruff check --fix`):\n{out.stdout}{out.stderr}"


def test_the_linter_reads_the_project_settings():
    """The settings are the project's, not ruff's defaults: a line of 113 characters passes (ruff's default limit is
    88), one of 130 is reported."""

    def check(line: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--stdin-filename", "mvc/probe.py",
                               "-"], input=line + "\n", capture_output=True, text=True, cwd=REPO)

    assert check("x = " + "1 + " * 27 + "1").returncode == 0
    long = check("x = " + "1 + " * 27 + "1" + " + 1" * 4 + "1" * 1)
    assert long.returncode != 0 and "E501" in long.stdout
