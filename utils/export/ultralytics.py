"""--include ultralytics: a .pt in Ultralytics YOLOv5's own layout, for people who go back to Ultralytics' tools.

Ultralytics' loaders (models/experimental.py attempt_load, DetectMultiBackend, train.py --weights) torch.load the file
with code execution and use ckpt['ema'] or ckpt['model'] as a module: .to(device).float(), .fuse(), .names, .stride,
Detect's anchor_grid list. Our classes sit at Ultralytics' import paths (models.yolo.Model/Detect, models.common.Conv,
C3, SPPF...) with its attribute names, so a cleaned copy of our model pickles into the layout of an official
yolov5n.pt, and unpickles into Ultralytics' own classes there.

The file is a pickle: loading it runs code, so it is for Ultralytics users only. Our own tools keep writing the
tensors-only format (utils.checkpoint); our loader still reads this file without running it (allowlisted names map
to inert stand-ins, the model is rebuilt from its yaml).
"""
from __future__ import annotations

import pickle
from copy import deepcopy
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.yolo import DetectionModel, Detect
from utils.atomic import atomic_path
from utils.checkpoint import ALLOWED_CLASSES
from utils.torch_utils import de_parallel

from .prepare import is_qat

# Top-level keys of a checkpoint Ultralytics' train.py writes (strip_optimizer keeps them, set to None).
ULTRALYTICS_KEYS = ("epoch", "best_fitness", "model", "ema", "updates", "optimizer", "opt", "git", "date")
# Attributes Ultralytics' DetectionModel carries (train.py also sets nc, names); ours beyond these stay behind.
MODEL_ATTRS = ("yaml", "save", "names", "inplace", "stride", "nc")
_PLAIN = (type(None), bool, int, float, str, torch.Tensor, torch.Size)


def check_ultralytics(model: nn.Module) -> None:
    """One line when Ultralytics' loaders could not run this model; nothing is written before this passes."""
    model = de_parallel(model)
    if is_qat(model):
        raise ValueError("--include ultralytics: this is a QAT model (FakeQuantize layers); Ultralytics YOLOv5 has no "
                         "quantized layers to load it into. Export it as INT8 ONNX (--include onnx) for every engine, "
                         "or export the float checkpoint it was fine-tuned from.")
    for name, m in model.named_modules():
        cls = f"{type(m).__module__}.{type(m).__qualname__}"
        if m is not model and cls not in ALLOWED_CLASSES:
            raise ValueError(f"--include ultralytics: layer '{name}' is a {cls}, which Ultralytics YOLOv5 does not "
                             f"have; only standard YOLOv5 layers (Conv, C3, SPPF, Detect...) export to its format")
        hooks = [k for k, v in vars(m).items() if k.startswith("_") and k.endswith("hooks") and v]
        if hooks:
            raise ValueError(f"--include ultralytics: layer '{name or 'model'}' has {hooks[0]} attached (our code, "
                             f"which Ultralytics cannot unpickle); export the checkpoint as saved, without them")


def ultralytics_model(model: nn.Module, names: list[str] | dict[int, str] | None = None,
                      half: bool = True) -> nn.Module:
    """A copy of `model` carrying exactly what Ultralytics' DetectionModel carries: eval, fp16, no grads, no caches."""
    check_ultralytics(model)
    src = de_parallel(model)
    m = deepcopy(src).cpu().eval()
    for k in [k for k in vars(m) if not k.startswith("_") and k not in MODEL_ATTRS and k != "training"]:
        delattr(m, k)  # checkpoint_meta, epoch...: ours, not Ultralytics'
    names = names if names is not None else getattr(src, "names", None) or [str(i) for i in range(src.nc)]
    m.names = dict(names) if isinstance(names, dict) else dict(enumerate(names))  # Ultralytics' current form
    m.__dict__["nc"] = int(src.nc)  # a property on our class, a plain attribute on Ultralytics' (train.py sets it)
    detect = m.model[-1]
    if not isinstance(detect, Detect):
        raise ValueError(f"--include ultralytics: the last layer is a {type(detect).__name__}, not Detect")
    detect.grid = [torch.empty(0) for _ in range(detect.nl)]  # rebuilt at the first forward, as Ultralytics does
    detect.anchor_grid = [torch.empty(0) for _ in range(detect.nl)]
    m.stride = detect.stride
    for layer in m.modules():
        bad = [k for k, v in vars(layer).items() if k not in ("_parameters", "_buffers", "_modules") and not _plain(v)]
        if bad:
            raise ValueError(f"--include ultralytics: {type(layer).__name__}.{bad[0]} holds a "
                             f"{type(vars(layer)[bad[0]]).__name__}, which Ultralytics could not unpickle")
    if half:
        m.half()  # as Ultralytics' train.py and strip_optimizer save
    for p in m.parameters():
        p.requires_grad = False
    return m


def _plain(v: Any) -> bool:
    """Data that unpickles anywhere: no functions, no objects of our classes (hook dicts must be empty)."""
    if isinstance(v, _PLAIN):
        return True
    if isinstance(v, (list, tuple, set, frozenset)):
        return all(_plain(x) for x in v)
    if isinstance(v, dict):
        return all(_plain(k) and _plain(x) for k, x in v.items())
    return False


class _Pickler(pickle.Pickler):
    """Names our DetectionModel 'models.yolo.Model', as official files do: every Ultralytics release has that name."""

    def reducer_override(self, obj: Any) -> Any:
        return "Model" if obj is DetectionModel else NotImplemented


class _PickleModule:
    """torch.save(pickle_module=...) subclasses .Pickler; nothing else of the module is used for saving."""

    Pickler = _Pickler
    HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL


def ultralytics_checkpoint(model: nn.Module, names: list[str] | dict[int, str] | None = None, half: bool = True,
                           opt: dict | None = None) -> dict[str, Any]:
    """The dict Ultralytics' strip_optimizer leaves: the model, no EMA/optimizer, epoch -1."""
    return {"epoch": -1, "best_fitness": None, "model": ultralytics_model(model, names, half), "ema": None,
            "updates": None, "optimizer": None, "opt": dict(opt or {}), "git": None,
            "date": datetime.now().isoformat()}


def export_ultralytics(model: nn.Module, file: str | Path, names: list[str] | dict[int, str] | None = None,
                       half: bool = True, opt: dict | None = None) -> Path:
    """Write `file` (atomically) in Ultralytics YOLOv5's checkpoint layout; returns its path."""
    file = Path(file)
    ckpt = ultralytics_checkpoint(model, names, half, {"exported_by": "yolov5-sparse export.py --include ultralytics",
                                                       **(opt or {})})
    with atomic_path(file, what="Ultralytics checkpoint") as tmp:
        torch.save(ckpt, tmp, pickle_module=_PickleModule)
    return file
