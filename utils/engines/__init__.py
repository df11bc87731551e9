"""Inference engines behind one interface: `load_engine(weights, engine)` -> callable batch -> predictions.

Usage:
    from utils.engines import load_engine
    engine = load_engine("yolov5n.onnx", engine="deepsparse", batch_size=1, imgsz=640, num_threads=2)
    pred = engine(batch)  # batch: float32 NCHW RGB in [0,1] (or uint8); pred: (B, N, 5+nc), or for a file
                          # exported with --head raw a utils.raw_head.RawPrediction that NMS decodes cell by cell
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from torch import nn

from .base import Engine, EngineUnavailable
from .deepsparse_engine import DeepSparseEngine
from .onnxruntime_engine import OnnxRuntimeEngine
from .opencv_engine import OpenCVEngine
from .openvino_engine import OpenVinoEngine
from .torch_engine import TorchEngine


@dataclass(frozen=True)
class EngineSpec:
    """Everything the scripts need to know about one engine, in one row of ENGINES."""

    cls: type[Engine]
    aliases: tuple[str, ...]
    file_kind: str  # what --weights must be, in words for error messages
    suffixes: tuple[str, ...]  # "/" = a folder (OpenVINO IR)
    package: str  # pip distribution, reported by benchmark.py's machine section
    async_api: bool  # a multi-stream scheduler benchmark.py's async scenario can use
    color: str  # one colour per engine in every plot
    benchmarked: bool = True  # in benchmark.py's default --engines (OpenCV: on request; 5x slower than ORT here)


# The one engine registry: adding an engine is one row here plus its own module.
ENGINES: dict[str, EngineSpec] = {
    "torch": EngineSpec(TorchEngine, ("pytorch", "pt"), "checkpoint", (".pt", ".pth"), "torch", False, "#8c8c8c"),
    "onnxruntime": EngineSpec(OnnxRuntimeEngine, ("ort", "onnx"), "ONNX", (".onnx",), "onnxruntime", False, "#4c72b0"),
    "deepsparse": EngineSpec(DeepSparseEngine, ("ds",), "ONNX", (".onnx",), "deepsparse", True, "#e4572e"),
    "openvino": EngineSpec(OpenVinoEngine, ("ov",), "ONNX or OpenVINO IR", (".onnx", ".xml", "/"), "openvino", True,
                           "#55a868"),
    "opencv": EngineSpec(OpenCVEngine, ("cv2", "dnn"), "ONNX", (".onnx",), "opencv-python-headless", False,
                         "#8172b2", benchmarked=False),
}
BENCHMARKED = [name for name, spec in ENGINES.items() if spec.benchmarked]
ALIASES = {alias: name for name, spec in ENGINES.items() for alias in spec.aliases}
ASYNC_ENGINES = tuple(name for name, spec in ENGINES.items() if spec.async_api)

__all__ = ["ALIASES", "ASYNC_ENGINES", "BENCHMARKED", "ENGINES", "Engine", "EngineSpec", "EngineUnavailable",
           "check_onnx_file", "engine_name", "load_engine", "reads_exported_files"]


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
    for name, spec in ENGINES.items():  # the first engine (in registry order) that takes the suffix
        if p.suffix in spec.suffixes or (p.is_dir() and "/" in spec.suffixes):
            return name
    raise ValueError(f"{weights}: cannot tell the engine from the suffix; use a .pt, .onnx, OpenVINO .xml or "
                     f"*_openvino_model/ folder, or pass engine= one of {', '.join(ENGINES)}")


def reads_exported_files(engine: str) -> bool:
    """Engines that run exported files (ONNX/IR) rather than a PyTorch checkpoint: a zoo: stub resolves to .onnx."""
    return ".onnx" in ENGINES[engine_name("", engine)].suffixes


def _check_file(weights: str | Path | nn.Module, name: str) -> None:
    """Say which export is needed when a file cannot feed the chosen engine, before the backend says it worse."""
    if isinstance(weights, nn.Module):
        if reads_exported_files(name):
            raise ValueError(f"engine {name!r} needs an exported file, not an in-memory model; run export.py first")
        return
    p = Path(weights)
    if not p.exists():
        raise FileNotFoundError(f"{p}: weights not found")
    spec = ENGINES[name]
    if p.suffix == ".onnx" and ".onnx" in spec.suffixes:
        check_onnx_file(p)
    if p.suffix in spec.suffixes or (p.is_dir() and "/" in spec.suffixes):
        return
    if not reads_exported_files(name):
        raise ValueError(f"{p}: engine {name!r} needs a .pt checkpoint; use --engine onnxruntime for exported files")
    include = "openvino" if ".xml" in spec.suffixes else "onnx"
    kind = spec.file_kind
    raise ValueError(f"{p}: engine {name!r} needs a {kind} file; export one with "
                     f"`python export.py --weights {p} --include {include}`")


def check_onnx_file(path: str | Path) -> None:
    """Each backend reports a file that is not ONNX differently (protobuf errors, bare RuntimeErrors); say it once."""
    try:
        proto = onnx.load(str(path), load_external_data=False)  # parse only: backends accept more than onnx.checker
    except Exception as e:
        raise ValueError(f"{path}: not a valid ONNX model ({type(e).__name__}: {str(e).strip()[:120]}); "
                         f"re-export it with `python export.py --weights model.pt`") from None
    for location in _external_locations(proto):
        if not _inside(Path(path).resolve().parent, location):
            raise ValueError(f"{path}: refused: its weights point outside the model's folder (external data "
                             f"{location!r}); keep external data files beside the .onnx, or re-export without them")


def _external_locations(proto: onnx.ModelProto) -> list[str]:
    """The 'location' of every tensor stored as ONNX external data (initializers, including in subgraphs)."""
    tensors = list(proto.graph.initializer) + [a.t for n in proto.graph.node for a in n.attribute if a.HasField("t")]
    return [e.value for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL
            for e in t.external_data if e.key == "location"]


def _inside(folder: Path, location: str) -> bool:
    """A relative path that, with symlinks resolved, stays in the model's folder (no '..', no absolute path)."""
    if Path(location).is_absolute():
        return False
    target = (folder / location).resolve()
    return target == folder or folder in target.parents


def load_engine(weights: str | Path | nn.Module, engine: str | None = None, batch_size: int = 1,
                imgsz: int | tuple[int, int] = 640, num_threads: int | None = None, device: str = "cpu",
                **options: Any) -> Engine:
    """Open weights with the named engine (default from the suffix); extra options go to it (e.g. precision)."""
    name = engine_name(weights, engine)
    _check_file(weights, name)
    cls = ENGINES[name].cls
    eng = cls(batch_size=batch_size, imgsz=imgsz, num_threads=num_threads, device=device, **options).load(weights)
    if not eng.names:  # no metadata and no static output shape: one dummy run tells the class count
        eng.warmup()
    return eng
