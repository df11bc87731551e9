"""The benchmark's foreign-load meter sees another process's CPU use and flags the row it distorted."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from utils.benchmark import suite
from utils.benchmark.machine import FOREIGN_LOAD_WARN

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc/<pid>/stat (fields 14 and 15, after the parenthesised name)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class IdleStep:
    """A pipeline whose batches wait 10 ms without using CPU: this process adds almost nothing to the load."""

    imgsz = (64, 64)

    def __call__(self, images):
        time.sleep(0.01)
        return None, (1.0, 8.0, 1.0)


class FakeEngine:
    def info(self):
        return {"version": "0", "threads": 1}


def test_busy_process_beside_the_benchmark_flags_the_row(monkeypatch, tmp_path):
    monkeypatch.setattr(suite, "open_engine", lambda *a, **k: FakeEngine())
    monkeypatch.setattr(suite, "Pipeline", lambda *a, **k: IdleStep())
    v = SimpleNamespace(group="g", name="g dense FP32", sparsity=0.0, pattern="dense", precision="FP32",
                        weights_for=lambda *a: None)
    s = suite.Settings(imgsz=(64, 64), warmup=1, iterations=1, time_s=1.5)
    images = [np.zeros((64, 64, 3), np.uint8)]

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it start spinning
        c0, t0 = cpu_seconds(spinner.pid), time.perf_counter()
        row = suite.measure_row(v, "onnxruntime", 1, "sync", images, s, tmp_path, cores=1)
        c1, t1 = cpu_seconds(spinner.pid), time.perf_counter()
    finally:
        spinner.kill()
        spinner.wait()
    ncpu = os.cpu_count() or 1
    # the spinner's own share of the machine, measured independently of the meter; whatever else runs here only
    # adds to the foreign load, so the meter must report at least this (less 2 clock ticks of rounding per CPU)
    spinner_share = (c1 - c0) / ((t1 - t0) * ncpu)
    tick = 2 / os.sysconf("SC_CLK_TCK") / (t1 - t0)
    assert spinner_share > 2 * FOREIGN_LOAD_WARN, spinner_share  # it really ran: alone it is worth a flag
    assert row["status"] == "ok" and row["foreign_load"] >= spinner_share - tick, (row, spinner_share)
    assert row["foreign_load"] > FOREIGN_LOAD_WARN
    assert row["note"].startswith("foreign CPU load") and "timing unreliable" in row["note"]
    assert row["own_cpu_share"] < 0.05  # the sleeping pipeline is not what the meter counted
