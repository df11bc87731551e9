"""What the numbers were measured on: CPU model, cores, vector/matrix ISA flags, engine versions, and foreign load.

CPU engines' speed depends on the instruction set more than on anything else (INT8 pays only with VNNI/AMX), and on a
shared machine other processes steal cores mid-run, so every benchmark result carries both facts with it.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from utils.engines import ENGINES

# Flag groups read from /proc/cpuinfo; any member present means the feature is there.
ISA_FLAGS: dict[str, tuple[str, ...]] = {
    "avx2": ("avx2",),
    "avx512": ("avx512f",),
    "vnni": ("avx512_vnni", "avx_vnni", "amx_int8"),
    "amx": ("amx_tile", "amx_int8", "amx_bf16"),
    "bf16": ("avx512_bf16", "amx_bf16"),
}
PACKAGES = {**{name: spec.package for name, spec in ENGINES.items()},
            "onnx": "onnx", "numpy": "numpy", "opencv": "opencv-python-headless"}
FOREIGN_LOAD_WARN = 0.05  # above this share of the machine, other processes visibly distort CPU timings


def read_cpuinfo(path: str | Path = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """(model name, flag set) of the first CPU; ('', empty set) where there is no /proc/cpuinfo."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "", set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def isa_support(flags: set[str]) -> dict[str, bool | None]:
    """avx2/avx512/vnni/amx/bf16 -> present?; None for all when the flags could not be read."""
    if not flags:
        return {k: None for k in ISA_FLAGS}
    return {k: any(f in flags for f in group) for k, group in ISA_FLAGS.items()}


def engine_versions() -> dict[str, str]:
    """Installed versions without importing the packages (deepsparse and openvino are slow and chatty to import)."""
    out = {}
    for key, dist in PACKAGES.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = "not installed"
    return out


def core_counts() -> dict[str, int | None]:
    """Logical CPUs, physical cores, and the CPUs this process may run on (containers and taskset limit it)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    return {"logical": os.cpu_count(), "physical": psutil.cpu_count(logical=False), "usable": usable}


def machine_report(num_cores: int | None = None) -> dict[str, Any]:
    """Everything a reader needs to compare these numbers with someone else's."""
    model, flags = read_cpuinfo()
    cores = core_counts()
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "cores": cores,
        "cores_used": num_cores or cores["usable"],
        "isa": isa_support(flags),
        "versions": engine_versions(),
        "python": sys.version.split()[0],
        "os": platform.platform(),
    }


def format_machine(report: dict[str, Any]) -> str:
    """Two lines for the console: CPU and ISA, then engine versions."""
    isa = ", ".join(f"{k.upper() if k != 'bf16' else k}={'?' if v is None else ('yes' if v else 'no')}"
                    for k, v in report["isa"].items())
    c = report["cores"]
    cores = (f"{report['cores_used']} cores used of {c['usable']} usable "
             f"({c['logical']} logical, {c['physical']} physical)")
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    return f"Machine: {report['cpu']}; {cores}; {isa}\nVersions: {versions}; Python {report['python']}"


def int8_warning(report: dict[str, Any]) -> str | None:
    """INT8 without VNNI/AMX runs through slow emulation: say so next to any INT8 number measured here."""
    vnni = report["isa"].get("vnni")
    if vnni:
        return None
    why = "could not read CPU flags" if vnni is None else "this CPU has no VNNI (AVX512_VNNI/AVX_VNNI) or AMX"
    return f"WARNING: INT8 rows measured, but {why}; INT8 speedups need VNNI, expect little or none here"


# ---- foreign CPU load: busy time of the whole machine minus our own process, over the timed window ----

def _system_busy_seconds(stat: str | Path = "/proc/stat") -> tuple[float, int] | None:
    """(busy CPU-seconds summed over CPUs since boot, number of CPUs) from /proc/stat; None where absent."""
    try:
        lines = Path(stat).read_text().splitlines()
    except OSError:
        return None
    fields = [float(v) for v in lines[0].split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is already inside user
    busy = sum(fields[:8]) - fields[3] - fields[4]
    ncpu = sum(1 for ln in lines if ln.startswith("cpu") and ln[3:4].isdigit())
    return busy / os.sysconf("SC_CLK_TCK"), ncpu


def _psutil_busy_seconds() -> tuple[float, int]:
    """Portable fallback for machines without /proc/stat."""
    t = psutil.cpu_times()
    busy = sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    return busy, psutil.cpu_count() or 1


@dataclass
class LoadSnapshot:
    """Clock readings at one instant; two of them give the foreign load in between."""

    wall: float
    busy: float
    own: float
    ncpu: int

    @classmethod
    def now(cls) -> "LoadSnapshot":
        sysbusy = _system_busy_seconds() or _psutil_busy_seconds()
        t = os.times()
        return cls(time.perf_counter(), sysbusy[0], t.user + t.system, max(sysbusy[1], 1))


@dataclass
class ForeignLoadMeter:
    """Context manager measuring the share of all CPUs used by OTHER processes while a benchmark row ran.

    foreign = (machine busy time - this process's CPU time) / (wall time x CPUs). Engine threads live in this
    process, so they count as ours. /proc/stat ticks are 10 ms, so windows under ~1 s are coarse.
    """

    start: LoadSnapshot | None = None
    foreign: float | None = None
    own_cpu_share: float | None = None
    wall_s: float = 0.0

    def __enter__(self) -> "ForeignLoadMeter":
        self.start = LoadSnapshot.now()
        return self

    def __exit__(self, *exc: object) -> None:
        end = LoadSnapshot.now()
        s = self.start
        self.wall_s = max(end.wall - s.wall, 1e-9)
        capacity = self.wall_s * end.ncpu
        self.foreign = min(max((end.busy - s.busy) - (end.own - s.own), 0.0) / capacity, 1.0)
        self.own_cpu_share = min((end.own - s.own) / capacity, 1.0)
