"""Progress in a log that is not a terminal: whole lines, at most one per tenth of the total or per 30 seconds."""

from __future__ import annotations

import io
import subprocess
import sys

from mvc.progress import LogProgress


def test_a_bar_in_a_log_writes_a_line_per_tenth_and_no_carriage_returns():
    log = io.StringIO()
    for _ in LogProgress(range(1000), desc="steps", file=log):
        pass
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert len(lines) == 11 and lines[0].startswith("steps:   0%") and "100% 1000/1000" in lines[-1]


def test_a_bar_without_a_total_writes_only_when_time_has_passed():
    log = io.StringIO()
    bar = LogProgress(total=None, desc="open", file=log, every_s=3600)
    for _ in range(500):
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("open: 500it")  # the first line and the end


def test_the_kits_bars_become_log_lines_where_stderr_is_a_pipe():
    code = "from mvc.progress import progress\nfor _ in progress(range(300), desc='loop'): pass\n"
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert "\r" not in err and len([x for x in err.splitlines() if x.startswith("loop:")]) == 11
