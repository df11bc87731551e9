"""OpenCV DNN engine: the runtime already inside every OpenCV install, no other package needed.

It runs float files and QOperator INT8 files (`export.py --int8 --int8-format qoperator`: ConvolutionInt8 and friends);
QDQ files load too, but OpenCV keeps them as float fake-quant (slower than FP32).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import onnx

from .base import Engine, EngineUnavailable
from .metadata import ONNX_DTYPES, interpret, nc_from_output_shape


def _dim(d: onnx.TensorShapeProto.Dimension) -> int | str:
    return d.dim_value if d.dim_value > 0 else (d.dim_param or "?")


class OpenCVEngine(Engine):
    """ONNX file in cv2.dnn on its own CPU backend; outputs come back in the file's output order."""

    name = "opencv"

    def load(self, path: str | Path) -> "OpenCVEngine":
        if self.device != "cpu":
            raise EngineUnavailable(f"opencv engine: the OpenCV CPU backend only, got device={self.device!r}")
        self.file = str(path)
        proto = onnx.load(self.file, load_external_data=False)
        inp, outs = proto.graph.input[0], proto.graph.output
        self.input_name = inp.name
        self.input_dtype = np.dtype(ONNX_DTYPES.get(inp.type.tensor_type.elem_type, np.float32))
        self.input_shape = [_dim(d) for d in inp.type.tensor_type.shape.dim]
        spatial = self.spatial(self.input_shape)
        self.imgsz = tuple(spatial) if all(isinstance(d, int) for d in spatial) else None
        self.fixed_batch = self.input_shape[0] if isinstance(self.input_shape[0], int) else None
        self.dynamic = self.imgsz is None
        self.output_names = [o.name for o in outs]
        meta = interpret({p.key: p.value for p in proto.metadata_props},
                         nc=nc_from_output_shape([_dim(d) for d in outs[0].type.tensor_type.shape.dim]))
        self.names, self.stride, self.metadata = meta["names"], meta["stride"], meta
        try:
            self.net = cv2.dnn.readNetFromONNX(self.file)
        except cv2.error as e:
            raise EngineUnavailable(f"opencv engine: OpenCV {cv2.__version__} cannot read {self.file} "
                                    f"({str(e).strip().splitlines()[-1]}); run it with --engine onnxruntime") from e
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        if self.num_threads:
            cv2.setNumThreads(int(self.num_threads))  # process-wide in OpenCV: also the letterbox's resize threads
        return self

    def _forward(self, batch: np.ndarray) -> list[np.ndarray]:
        self.net.setInput(batch)
        try:
            return list(self.net.forward(self.output_names))
        except cv2.error as e:
            raise RuntimeError(f"opencv engine: {Path(self.file).name} failed in OpenCV "
                               f"({str(e).strip().splitlines()[-1]}); QOperator INT8 files need float pixels "
                               "(export without --uint8-input/--nhwc) or run it with --engine onnxruntime") from e

    def version(self) -> str:
        return cv2.__version__

    def threads(self) -> int | None:
        return cv2.getNumThreads()

    def int8_kernels(self) -> str | None:
        """Convolution layers OpenCV built as INT8 (ConvolutionInt8) out of all its convolution layers."""
        types = Counter(self.net.getLayer(self.net.getLayerId(n)).type for n in self.net.getLayerNames())
        convs = types["Convolution"] + types["ConvolutionInt8"]
        return f"{types['ConvolutionInt8']}/{convs} conv INT8 (ConvolutionInt8)"
