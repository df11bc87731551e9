"""End-to-end CPU benchmark of YOLOv5 variants across engines (benchmark.py is the command-line front end).

Modules: machine (CPU/ISA/versions, foreign load), pipeline (pre -> engine -> post), runner (timing harness),
streams (async engines), blocks (1xN block pruning), variants (what to time), suite (the grid), report (outputs).
"""
from __future__ import annotations

from .machine import ForeignLoadMeter, machine_report
from .pipeline import Pipeline
from .runner import Measurement, measure_async, measure_sync
from .variants import Variant, register_int8_exporter

__all__ = ["ForeignLoadMeter", "Measurement", "Pipeline", "Variant", "machine_report", "measure_async",
           "measure_sync", "register_int8_exporter"]
