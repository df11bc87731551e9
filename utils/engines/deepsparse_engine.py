"""DeepSparse engine: Neural Magic's CPU runtime, the one that turns sparsity and INT8 into speed."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from .base import Engine, EngineUnavailable
from .metadata import ONNX_DTYPES, interpret, nc_from_output_shape


def import_deepsparse():
    """deepsparse, or EngineUnavailable naming the install command (it also refuses CPUs without AVX2)."""
    try:
        import deepsparse
    except ImportError as e:
        raise EngineUnavailable(f"deepsparse engine: package not importable ({e}); install it with "
                                "`pip install deepsparse==1.8.0` (Linux x86-64 with AVX2/AVX-512, Python<3.12) "
                                "or choose --engine onnxruntime") from e
    except Exception as e:  # deepsparse checks the CPU at import and raises its own errors
        raise EngineUnavailable(f"deepsparse engine: not usable on this machine ({type(e).__name__}: {e}); "
                                "choose --engine onnxruntime or openvino") from e
    return deepsparse


def _dim(d) -> int | None:
    """Static value of an ONNX dimension, None when symbolic."""
    return d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None


def static_onnx(path: str | Path, batch_size: int, imgsz: tuple[int, int], workdir: str) -> tuple[str, dict]:
    """DeepSparse compiles one static shape: pin batch (and dynamic H/W) and write a copy when the file differs."""
    model = onnx.load(str(path))
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    if _dim(dims[3]) == 3 and _dim(dims[1]) != 3:  # NHWC pixels (export --nhwc)
        want = [batch_size, _dim(dims[1]) or imgsz[0], _dim(dims[2]) or imgsz[1], 3]
    else:
        want = [batch_size, dims[1].dim_value or 3, _dim(dims[2]) or imgsz[0], _dim(dims[3]) or imgsz[1]]
    info = {"input_name": inp.name, "elem_type": inp.type.tensor_type.elem_type,
            "orig_shape": [_dim(d) or d.dim_param for d in dims], "shape": want,
            "metadata": {p.key: p.value for p in model.metadata_props},
            "output_shape": [_dim(d) or d.dim_param for d in model.graph.output[0].type.tensor_type.shape.dim]}
    if [_dim(d) for d in dims] == want:
        return str(path), info
    for d, v in zip(dims, want):
        d.ClearField("dim_param")
        d.dim_value = v
    out = Path(workdir) / f"{Path(path).stem}_b{batch_size}_{'x'.join(map(str, want[1:]))}.onnx"
    onnx.save(model, str(out))
    return str(out), info


class DeepSparseEngine(Engine):
    """ONNX file compiled by DeepSparse for a fixed batch size and image size on num_threads cores."""

    name = "deepsparse"

    def load(self, path: str | Path) -> "DeepSparseEngine":
        ds = import_deepsparse()
        if self.device != "cpu":
            raise EngineUnavailable(f"deepsparse engine: runs on CPU only, got device={self.device!r}")
        self.file = str(path)
        self._tmp = tempfile.TemporaryDirectory(prefix="deepsparse_")  # lives as long as the engine
        compiled, info = static_onnx(path, self.batch_size, self.requested_imgsz, self._tmp.name)
        self.engine = ds.compile_model(compiled, batch_size=self.batch_size, num_cores=self.num_threads)
        self.input_name = info["input_name"]
        self.input_dtype = np.dtype(ONNX_DTYPES.get(info["elem_type"], np.float32))
        self.input_shape = info["shape"]
        self.imgsz = tuple(self.spatial(info["shape"]))
        self.fixed_batch = self.batch_size
        self.dynamic = False  # the compiled copy takes exactly one shape whatever the file allowed
        meta = interpret(info["metadata"], nc=nc_from_output_shape(info["output_shape"]))
        self.names, self.stride, self.metadata = meta["names"], meta["stride"], meta
        return self

    def _forward(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.engine.run([batch])

    def version(self) -> str:
        return import_deepsparse().__version__

    def threads(self) -> int | None:
        return getattr(self.engine, "num_cores", self.num_threads)
