"""Inference engines behind one interface: `load_engine(weights, engine)` -> callable batch -> predictions.

Usage:
    from utils.engines import load_engine
    engine = load_engine("yolov5n.onnx", engine="deepsparse", batch_size=1, imgsz=640, num_threads=2)
    pred = engine(batch)  # batch: float32 NCHW RGB in [0,1] (or uint8); pred: (B, N, 5+nc)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .base import Engine, EngineUnavailable
from .deepsparse_engine import DeepSparseEngine
from .onnxruntime_engine import OnnxRuntimeEngine
from .openvino_engine import OpenVinoEngine
from .torch_engine import TorchEngine

ENGINES: dict[str, type[Engine]] = {
    "torch": TorchEngine,
    "onnxruntime": OnnxRuntimeEngine,
    "deepsparse": DeepSparseEngine,
    "openvino": OpenVinoEngine,
}
ALIASES = {"pytorch": "torch", "pt": "torch", "ort": "onnxruntime", "onnx": "onnxruntime", "ds": "deepsparse",
           "ov": "openvino"}
FILE_KINDS = {"torch": ("checkpoint", (".pt", ".pth")), "onnxruntime": ("ONNX", (".onnx",)),
              "deepsparse": ("ONNX", (".onnx",)), "openvino": ("ONNX or OpenVINO IR", (".onnx", ".xml", "/"))}

__all__ = ["ENGINES", "Engine", "EngineUnavailable", "check_onnx_file", "engine_name", "load_engine"]


def engine_name(weights: str | Path | nn.Module, engine: str | None = None) -> str:
    """Canonical engine name: the one asked for, else the one the file suffix implies."""
    if engine:
        key = ALIASES.get(engine.lower(), engine.lower())
        if key not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        return key
    if isinstance(weights, nn.Module):
        return "torch"
    p = Path(weights)
    if p.suffix in (".pt", ".pth"):
        return "torch"
    if p.suffix == ".onnx":
        return "onnxruntime"
    if p.suffix == ".xml" or p.is_dir():
        return "openvino"
    raise ValueError(f"{weights}: cannot tell the engine from the suffix; use a .pt, .onnx, OpenVINO .xml or "
                     f"*_openvino_model/ folder, or pass engine= one of {', '.join(ENGINES)}")


def _check_file(weights: str | Path | nn.Module, name: str) -> None:
    """Say which export is needed when a file cannot feed the chosen engine, before the backend says it worse."""
    if isinstance(weights, nn.Module):
        if name != "torch":
            raise ValueError(f"engine {name!r} needs an exported file, not an in-memory model; run export.py first")
        return
    p = Path(weights)
    if not p.exists():
        raise FileNotFoundError(f"{p}: weights not found")
    kind, suffixes = FILE_KINDS[name]
    if p.suffix == ".onnx" and name != "torch":
        check_onnx_file(p)
    if p.suffix in suffixes or (p.is_dir() and "/" in suffixes):
        return
    if name == "torch":
        raise ValueError(f"{p}: engine 'torch' needs a .pt checkpoint; use --engine onnxruntime for exported files")
    include = "openvino" if name == "openvino" else "onnx"
    raise ValueError(f"{p}: engine {name!r} needs a {kind} file; export one with "
                     f"`python export.py --weights {p} --include {include}`")


def check_onnx_file(path: str | Path) -> None:
    """Each backend reports a file that is not ONNX differently (protobuf errors, bare RuntimeErrors); say it once."""
    import onnx

    try:
        onnx.load(str(path), load_external_data=False)  # parse only: backends accept more than onnx.checker
    except Exception as e:
        raise ValueError(f"{path}: not a valid ONNX model ({type(e).__name__}: {str(e).strip()[:120]}); "
                         f"re-export it with `python export.py --weights model.pt`") from None


def load_engine(weights: str | Path | nn.Module, engine: str | None = None, batch_size: int = 1,
                imgsz: int | tuple[int, int] = 640, num_threads: int | None = None, device: str = "cpu",
                **options: Any) -> Engine:
    """Open weights with the named engine (default from the suffix); extra options go to it (e.g. precision)."""
    name = engine_name(weights, engine)
    _check_file(weights, name)
    cls = ENGINES[name]
    eng = cls(batch_size=batch_size, imgsz=imgsz, num_threads=num_threads, device=device, **options).load(weights)
    if not eng.names:  # no metadata and no static output shape: one dummy run tells the class count
        eng.warmup()
    return eng
