"""The one inference-engine contract shared by val.py, detect.py and benchmark.py."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from utils.raw_head import RawHead, RawPrediction

LAYOUT_KEY = "input_layout"  # metadata key written by utils.export.pixels
NCHW_RGB, NHWC_BGR = "NCHW RGB", "NHWC BGR"  # planes (float or uint8); letterboxed OpenCV frames (uint8 HWC, BGR)


class EngineUnavailable(RuntimeError):
    """An engine whose package is missing or that cannot run on this machine; the message says what to do."""


class Engine(ABC):
    """Runs a detector on a letterboxed NCHW RGB batch and returns decoded predictions (B, N, 5+nc), or, for a file
    exported with `--head raw`, its conv maps as a RawPrediction that NMS decodes cell by cell.

    Subclasses implement `load` and `_forward`; dtype conversion, static-batch chunking and shape checks
    live here so every engine behaves the same for its callers.
    """

    name: str = "engine"

    def __init__(self, batch_size: int = 1, imgsz: int | tuple[int, int] = 640,
                 num_threads: int | None = None, device: str = "cpu") -> None:
        self.batch_size = int(batch_size)
        self.requested_imgsz = as_hw(imgsz)
        self.num_threads = num_threads
        self.device = str(device)
        self.names: list[str] = []
        self.stride: int = 32
        self.imgsz: tuple[int, int] | None = None  # fixed (h, w) of the compiled input, None when dynamic
        self.dynamic: bool = True  # accepts any (stride-multiple) image size, i.e. imgsz is None
        self.input_name: str = "images"
        self.input_dtype: np.dtype = np.dtype(np.float32)
        self.input_shape: list[Any] = []
        self.fixed_batch: int | None = None  # engines compiled for one batch size get chunked/padded input
        self.file: str = ""
        self.metadata: dict[str, Any] = {}
        self._head: tuple[dict, RawHead | None] | None = None  # (the metadata it was read from, the head)

    @abstractmethod
    def load(self, path: str | Path) -> "Engine":
        """Open the model file and fill names/stride/imgsz/dynamic/input_*; returns self."""

    @abstractmethod
    def _forward(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run one batch already in the input dtype and (fixed) batch size; returns every output, in file order."""

    @abstractmethod
    def version(self) -> str:
        """Version of the backend package, recorded with every benchmark/val result."""

    def threads(self) -> int | None:
        """Threads the backend actually uses, when it can tell us."""
        return self.num_threads

    def int8_kernels(self) -> str | None:
        """How many convolutions the backend actually runs in INT8, e.g. '57/60 conv INT8 (QLinearConv)'; None when
        the engine cannot tell. An INT8 file only pays where the backend's kernels are INT8."""
        return None

    @property
    def torch_module(self) -> Any:
        """The PyTorch module behind the engine (val measures sparsity and runs it directly); None for files."""
        return None

    @property
    def channels_last(self) -> bool:
        """The file's input is (B, H, W, 3) (export --nhwc) rather than (B, 3, H, W)."""
        s = self.input_shape
        return len(s) == 4 and s[3] == 3 and s[1] != 3

    @property
    def input_layout(self) -> str:
        """'NCHW RGB' (float or uint8), or 'NHWC BGR' for a graph that takes letterboxed OpenCV frames."""
        if not self.channels_last:
            return NCHW_RGB
        return NHWC_BGR if self.metadata.get(LAYOUT_KEY) == NHWC_BGR else "NHWC RGB"

    def spatial(self, shape: list[Any]) -> list[Any]:
        """The (H, W) dimensions of an input shape in this file's layout."""
        return list(shape[1:3]) if self.channels_last else list(shape[2:4])

    @property
    def raw_head(self) -> RawHead | None:
        """The head to decode on the host when the file ends at Detect's convs (metadata head: raw), else None."""
        if self._head is None or self._head[0] is not self.metadata:
            self._head = (self.metadata, RawHead.from_metadata(self.metadata))
        return self._head[1]

    def __call__(self, batch: np.ndarray) -> np.ndarray | RawPrediction:
        """Decoded predictions (B, N, 5+nc) float32 (a RawPrediction for raw-head files) for a float [0,1] or uint8
        NCHW batch."""
        batch = self._to_input_dtype(self._to_layout(np.asarray(batch)))
        self._check_shape(batch)
        outs = self._run_batches(batch)
        if self.raw_head is not None:
            return RawPrediction(outs, self.raw_head)
        out = outs[0]
        if not self.names and out.ndim == 3 and out.shape[-1] > 5:  # file without metadata: generic class names
            self.names = [f"class{i}" for i in range(out.shape[-1] - 5)]
        return out

    def _outputs(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output as float32; only the first unless the file is raw-head (the others are never read)."""
        outs = self._forward(batch)
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        return [np.asarray(o, dtype=np.float32) for o in (outs if self.raw_head is not None else outs[:1])]

    def _run_batches(self, batch: np.ndarray) -> list[np.ndarray]:
        """One call for dynamic-batch engines; fixed-batch engines get chunks, the last one zero-padded."""
        fb = self.fixed_batch
        if fb is None or batch.shape[0] == fb:
            return self._outputs(batch)
        parts = []
        for i in range(0, batch.shape[0], fb):
            chunk = batch[i:i + fb]
            n = chunk.shape[0]
            if n < fb:
                pad = np.zeros((fb - n, *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            parts.append([o[:n] for o in self._outputs(chunk)])
        return [np.concatenate(level) for level in zip(*parts)]

    def warmup(self, n: int = 1) -> None:
        """Run a few zero batches so the first timed or measured call is not the one paying for setup."""
        h, w = self.imgsz or self.requested_imgsz
        shape = (h, w, 3) if self.channels_last else (3, h, w)
        x = np.zeros((self.fixed_batch or self.batch_size, *shape), dtype=self.input_dtype)
        for _ in range(n):
            self(x)

    def info(self) -> dict[str, Any]:
        """What ran, for logs and benchmark tables."""
        return {
            "name": self.name,
            "version": self.version(),
            "input_name": self.input_name,
            "input_dtype": str(self.input_dtype),
            "input_shape": list(self.input_shape),
            "threads": self.threads(),
            "file": self.file,
            "batch_size": self.fixed_batch or self.batch_size,
            "imgsz": list(self.imgsz) if self.imgsz else None,
            "dynamic": self.dynamic,
        }

    def _to_layout(self, batch: np.ndarray) -> np.ndarray:
        """NCHW RGB batches (val, export checks) for an NHWC file: transposed, BGR where the file wants OpenCV order."""
        if not self.channels_last or batch.ndim != 4 or batch.shape[1] != 3 or batch.shape[3] == 3:
            return batch
        return (batch[:, ::-1] if self.input_layout == NHWC_BGR else batch).transpose(0, 2, 3, 1)

    def _to_input_dtype(self, batch: np.ndarray) -> np.ndarray:
        """Accept float [0,1] or uint8 pixels whatever the model wants; quantized-input models take uint8."""
        want = self.input_dtype
        if batch.dtype == want:
            return np.ascontiguousarray(batch)
        if want == np.uint8:
            return np.ascontiguousarray(np.clip(np.rint(batch * 255.0), 0, 255).astype(np.uint8))
        if batch.dtype == np.uint8:
            return np.ascontiguousarray(batch.astype(want) / want.type(255))
        return np.ascontiguousarray(batch.astype(want))

    def _check_shape(self, batch: np.ndarray) -> None:
        """Fail with the fix in the message rather than deep inside a backend."""
        if batch.ndim != 4 or batch.shape[3 if self.channels_last else 1] != 3:
            raise ValueError(f"{self.name}: expected an {self.input_layout[:4]} batch with 3 channels, got shape "
                             f"{batch.shape}")
        hw = tuple(self.spatial(list(batch.shape)))
        if self.imgsz and hw != tuple(self.imgsz):
            raise ValueError(
                f"{self.name}: {self.file} has a fixed input of {self.imgsz[0]}x{self.imgsz[1]} but got "
                f"{hw[0]}x{hw[1]}; letterbox to that size (auto=False) or export with --dynamic"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(file={self.file!r}, imgsz={self.imgsz}, batch={self.fixed_batch})"


def as_hw(imgsz: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """640 -> (640, 640); [h, w] -> (h, w)."""
    if isinstance(imgsz, (list, tuple)):
        return (int(imgsz[0]), int(imgsz[-1]))
    return (int(imgsz), int(imgsz))
