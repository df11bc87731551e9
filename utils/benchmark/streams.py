"""Engines opened for the async scenario: several requests in flight at once, where the backend can schedule them.

DeepSparse: multi_stream scheduler with num_streams (its own default: half the cores). OpenVINO: THROUGHPUT hint,
one infer request per stream. PyTorch and ONNX Runtime have no stream scheduler, so async is 'n/a' for them.
These subclasses reopen the model after the base class has read its metadata, so the base loaders stay untouched.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from utils.engines import ASYNC_ENGINES, engine_name  # noqa: F401  (ASYNC_ENGINES re-exported for suite)
from utils.engines.base import Engine
from utils.engines.deepsparse_engine import DeepSparseEngine, import_deepsparse, static_onnx
from utils.engines.openvino_engine import OpenVinoEngine, import_openvino, infer_fresh


class NoAsync(RuntimeError):
    """The engine has no multi-stream mode; the row is reported as n/a rather than faked with threads."""


def default_streams(num_cores: int) -> int:
    """DeepSparse's benchmark default: one stream per two cores, at least one."""
    return max(1, num_cores // 2)


class DeepSparseStreams(DeepSparseEngine):
    """DeepSparse compiled with the multi_stream scheduler, so concurrent run() calls execute in parallel."""

    def __init__(self, *args, num_streams: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.num_streams = num_streams

    def load(self, path: str | Path) -> "DeepSparseStreams":
        super().load(path)  # metadata, dtype, static copy; its single-stream compile is then replaced (costs 1-3 s)
        ds = import_deepsparse()
        compiled, _ = static_onnx(path, self.batch_size, self.imgsz, self._tmp.name)
        self.engine = None  # free the first compile before building the second
        self.engine = ds.compile_model(compiled, batch_size=self.batch_size, num_cores=self.num_threads,
                                       num_streams=self.num_streams, scheduler=ds.Scheduler.multi_stream)
        self.num_streams = self.num_streams or getattr(self.engine, "num_streams", None)
        return self

    def info(self) -> dict:
        return {**super().info(), "scheduler": "multi_stream", "num_streams": self.num_streams}


class OpenVinoStreams(OpenVinoEngine):
    """OpenVINO compiled with the THROUGHPUT hint; each calling thread gets its own infer request."""

    def __init__(self, *args, num_streams: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.num_streams = num_streams
        self._local = threading.local()

    def load(self, path: str | Path) -> "OpenVinoStreams":
        super().load(path)
        ov = import_openvino()
        config = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "THROUGHPUT"}
        if self.num_threads:
            config["INFERENCE_NUM_THREADS"] = int(self.num_threads)
        if self.num_streams:
            config["NUM_STREAMS"] = int(self.num_streams)
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(self.file), "CPU", config)
        self.request = None
        if not self.num_streams:
            self.num_streams = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        return self

    def _forward(self, batch: np.ndarray) -> list[np.ndarray]:
        req = getattr(self._local, "request", None)
        if req is None:  # infer requests are not thread-safe: one per stream thread
            req = self._local.request = self.compiled.create_infer_request()
        n = len(self.compiled.outputs) if self.raw_head is not None else 1
        self._local.held = infer_fresh(req, batch, self.compiled.outputs[:n])  # the request writes into these
        return self._local.held

    def info(self) -> dict:
        return {**super().info(), "hint": "THROUGHPUT", "num_streams": self.num_streams}


STREAM_CLASSES: dict[str, type[Engine]] = {"deepsparse": DeepSparseStreams, "openvino": OpenVinoStreams}


def load_stream_engine(weights: str | Path, engine: str, batch_size: int, imgsz: tuple[int, int],
                       num_threads: int | None, num_streams: int | None, **options) -> Engine:
    """Open a file for the async scenario, or raise NoAsync naming why (torch/ORT have no stream scheduler)."""
    name = engine_name(weights, engine)
    if name not in STREAM_CLASSES:
        raise NoAsync(f"{name} has no multi-stream scheduler (async is DeepSparse/OpenVINO only)")
    eng = STREAM_CLASSES[name](batch_size=batch_size, imgsz=imgsz, num_threads=num_threads,
                               num_streams=num_streams, **options)
    return eng.load(weights)
