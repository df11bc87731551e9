"""ONNX Runtime engine: the reference CPU runtime every other exported engine is checked against."""
from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import psutil

from .base import Engine, EngineUnavailable
from .metadata import interpret, nc_from_output_shape

ORT_DTYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
              "tensor(float16)": np.float16, "tensor(double)": np.float64}


def import_onnxruntime():
    """onnxruntime, or EngineUnavailable naming the install command."""
    try:
        import onnxruntime
    except ImportError as e:
        raise EngineUnavailable(f"onnxruntime engine: package not importable ({e}); "
                                "install it with `pip install onnxruntime` or choose --engine torch") from e
    return onnxruntime



def session_options(num_threads: int | None = None, config: dict[str, str] | None = None):
    """The session settings every ORT run here uses (engine, profiler), so timings of both describe one setup;
    `config` overrides session config entries (e.g. tools/ort_spinning.py turns spinning back on)."""
    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.inter_op_num_threads = 1  # one graph branch at a time; the threads go to intra-op work
    # idle threads sleep instead of spinning: spinning stole the cores from our NMS and pre-processing (yolov5s
    # 640 b1 on 2 cores, end to end: 133 -> 116 ms; NMS 11 -> 3 ms; the engine call itself 118 -> 104 ms)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if num_threads:
        opts.intra_op_num_threads = int(num_threads)
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, str(value))
    return opts

class OnnxRuntimeEngine(Engine):
    """ONNX file on the CPU execution provider with all graph optimisations on."""

    name = "onnxruntime"

    def __init__(self, *args, session_config: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.session_config = session_config

    def load(self, path: str | Path) -> "OnnxRuntimeEngine":
        ort = import_onnxruntime()
        if self.device != "cpu":
            raise EngineUnavailable(f"onnxruntime engine: this build runs on CPU only, got device={self.device!r}")
        opts = session_options(self.num_threads, self.session_config)
        self.file = str(path)
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self._read_io()
        return self

    def _read_io(self) -> None:
        """Input name/dtype/shape and metadata decide how batches are fed and what the classes are called."""
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = list(inp.shape)
        self.input_dtype = np.dtype(ORT_DTYPES.get(inp.type, np.float32))
        self.output_name = self.session.get_outputs()[0].name
        spatial = self.spatial(self.input_shape)
        self.imgsz = tuple(spatial) if all(isinstance(d, int) and d > 0 for d in spatial) else None
        b = self.input_shape[0] if self.input_shape else None
        self.fixed_batch = b if isinstance(b, int) and b > 0 else None
        self.dynamic = self.imgsz is None  # any image size; batch flexibility is fixed_batch's business
        nc = nc_from_output_shape(list(self.session.get_outputs()[0].shape))
        meta = interpret(self.session.get_modelmeta().custom_metadata_map, nc=nc)
        self.names, self.stride, self.metadata = meta["names"], meta["stride"], meta

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        names = [o.name for o in self.session.get_outputs()] if self.raw_head is not None else [self.output_name]
        return self.session.run(names, {self.input_name: batch})

    def int8_kernels(self) -> str | None:
        """Convs of ORT's own optimized graph (written once to a temp file) that run as QLinearConv/ConvInteger."""
        ort = import_onnxruntime()
        with tempfile.TemporaryDirectory() as d:
            opts = session_options(self.num_threads, {**(self.session_config or {}),
                                                      "session.disable_prepacking": "1"})
            opts.optimized_model_filepath = str(Path(d) / "optimized.onnx")
            opts.log_severity_level = 3  # ORT warns that an NCHWc graph is machine-specific: we only count ops
            ort.InferenceSession(self.file, sess_options=opts, providers=["CPUExecutionProvider"])
            ops = Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node if "Conv" in n.op_type)
        quantized = ops["QLinearConv"] + ops["ConvInteger"]
        kinds = "/".join(k for k in ("QLinearConv", "ConvInteger") if ops[k]) or "none"
        return f"{quantized}/{sum(ops.values())} conv INT8 ({kinds})"

    def version(self) -> str:
        return import_onnxruntime().__version__

    def threads(self) -> int | None:
        if self.num_threads:
            return self.num_threads

        return psutil.cpu_count(logical=False) or os.cpu_count()  # ORT's default: one thread per physical core
