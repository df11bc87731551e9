"""Checkpoints: safe loading of official Ultralytics .pt files and our own atomic, tensors-only format.

Official YOLOv5 .pt files pickle whole modules. We never import or run those classes: torch's weights-only
unpickler maps each allowlisted class name to an inert stand-in that only records its state, and we rebuild
the model from its yaml. Anything outside the allowlist is refused before it can run.
"""
from __future__ import annotations

import os
import pickle
import re
from datetime import datetime, timezone
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from models.yolo import DetectionModel
from utils.atomic import AtomicWriteError, atomic_path
from utils.torch_utils import de_parallel

FORMAT = "yolov5-sparse"
FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A weights file that cannot be used, with a message that names it and says what to do."""


class _Recorded:
    """Stand-in for a pickled module class: keeps the pickled attribute dict, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state if isinstance(state, dict) else {"state": state}


_COMMON = ("Conv", "C3", "SPPF", "SPP", "Bottleneck", "BottleneckCSP", "Concat", "Focus", "DWConv", "GhostConv",
           "GhostBottleneck", "C3TR", "C3SPP", "C3Ghost", "Contract", "Expand", "Proto", "AutoShape", "DetectMultiBackend")
_NN = {"activation": ("SiLU", "Hardswish", "LeakyReLU", "ReLU", "Sigmoid", "Identity"), "batchnorm": ("BatchNorm2d",),
       "conv": ("Conv2d",), "container": ("Sequential", "ModuleList"), "pooling": ("MaxPool2d",),
       "upsampling": ("Upsample",), "linear": ("Identity", "Linear"), "dropout": ("Dropout",)}
ALLOWED_CLASSES = sorted(
    [f"models.yolo.{n}" for n in ("Model", "DetectionModel", "Detect", "BaseModel")]
    + [f"models.common.{n}" for n in _COMMON]
    + [f"models.experimental.{n}" for n in ("MixConv2d", "Ensemble")]
    + [f"torch.nn.modules.{mod}.{n}" for mod, names in _NN.items() for n in names]
)


def _stub_for(name: str) -> type:
    """A distinct inert class per allowlisted name (the unpickler keys its allowlist by class object)."""
    return type(name.rsplit(".", 1)[-1], (_Recorded,), {"_pickled_name": name})


def _module_state_dict(obj: _Recorded, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flatten a recorded module tree into a state_dict (persistent buffers only, like nn.Module)."""
    st = obj.__dict__.get("_state", {})
    out = {prefix + k: v for k, v in st.get("_parameters", {}).items() if v is not None}
    skip = st.get("_non_persistent_buffers_set", set())
    out.update({prefix + k: v for k, v in st.get("_buffers", {}).items() if v is not None and k not in skip})
    for name, child in st.get("_modules", {}).items():
        if isinstance(child, _Recorded):
            out.update(_module_state_dict(child, f"{prefix}{name}."))
    return out


def _torch_load_restricted(path: Path, extra: list[tuple[type, str]] | None = None) -> Any:
    """torch.load(weights_only=True), optionally with inert stand-ins for the official class names."""
    try:
        with torch.serialization.safe_globals(extra or []):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "GLOBAL" in msg or "global" in msg or "allowlist" in msg:
            found = re.search(r"GLOBAL ([\w.]+)", msg)
            what = found.group(1) if found else msg.strip().splitlines()[-1][:160]
            raise CheckpointError(f"{path}: refused to load: it references code outside the YOLOv5 allowlist ({what}). "
                                  f"Only load checkpoints from sources you trust; re-save it with this repo's train.py.") from None
        raise _not_a_checkpoint(path, e) from None
    except Exception as e:  # text, truncated zip, random bytes: the unpickler fails in many ways
        raise _not_a_checkpoint(path, e) from None


def _not_a_checkpoint(path: Path, e: Exception) -> CheckpointError:
    return CheckpointError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {str(e)[:100]}). "
                           f"Pass a YOLOv5 .pt file (official or trained with this repo).")


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dict without executing pickled code; refuses classes outside the allowlist."""
    path = Path(path)
    if str(path).startswith("zoo:"):  # scripts resolve stubs first (utils.sparsity.zoo); loading never touches the net
        raise CheckpointError(f"{path}: a zoo: stub is not a file; resolve it first (the scripts' --weights do).")
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found. Give a local .pt path or a zoo: stub.")
    ckpt = _torch_load_restricted(path, [(_stub_for(n), n) for n in ALLOWED_CLASSES])
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, found {type(ckpt).__name__}. Pass a YOLOv5 .pt file.")
    return ckpt


def _official_to_ours(ckpt: dict, path: Path) -> dict:
    """Turn an official checkpoint (recorded modules) into our plain format: state_dict + yaml + names + stride."""
    rec = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(rec, _Recorded):
        raise CheckpointError(f"{path}: no model found in checkpoint (keys: {sorted(ckpt)}). Pass a YOLOv5 detection .pt.")
    st = rec._state
    if "yaml" not in st:
        raise CheckpointError(f"{path}: the pickled model has no yaml config; it is not a YOLOv5 DetectionModel.")
    sd = {k: v.float() if v.is_floating_point() else v for k, v in _module_state_dict(rec).items()}
    names = st.get("names")
    names = [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names or [])
    stride = st.get("stride")
    return {"format": "ultralytics", "model": sd, "yaml": st["yaml"], "names": names,
            "stride": stride.tolist() if isinstance(stride, torch.Tensor) else stride,
            "epoch": ckpt.get("epoch", -1), "date": ckpt.get("date"), "recipe": None}


def load_checkpoint(path: str | Path) -> dict:
    """Checkpoint dict in our format, whichever kind the file is; weights always float32 (finished files are fp16)."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    if ckpt.get("format") != FORMAT:
        return _official_to_ours(ckpt, path)
    if isinstance(ckpt.get("model"), dict):
        ckpt["model"] = {k: v.float() if _is_half(v) else v for k, v in ckpt["model"].items()}
    return ckpt


def _is_half(v: Any) -> bool:
    return isinstance(v, torch.Tensor) and v.dtype == torch.float16


# A buffer every torch.ao FakeQuantize has: a state dict holding it is a QAT model, whose learned scales and
# int8 rounding boundaries fp16 weights could move, so it stays float32.
QAT_MARKER = ".fake_quant_enabled"


def compact_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp16 weights for finished files (half the bytes, as Ultralytics' strip_optimizer), never changing sparsity.

    QAT state dicts stay float32 whole (see QAT_MARKER). load_checkpoint converts back to float32.
    """
    if any(k.endswith(QAT_MARKER) for k in sd):
        return dict(sd)
    return {k: _half_keeping_zeros(v) for k, v in sd.items()}


FP16_TINIEST = 2.0 ** -24  # smallest positive fp16 (subnormal)


def _half_keeping_zeros(v: torch.Tensor) -> torch.Tensor:
    """fp16 copy whose zeros are exactly v's zeros: a nonzero below fp16's range (|v| < 3e-8, a few per model)
    becomes +-2**-24 instead of 0. A tensor with values beyond fp16's 65504 stays as it is."""
    if v.dtype != torch.float32:
        return v
    h = v.half()
    if not torch.equal(torch.isfinite(h), torch.isfinite(v)):
        return v
    underflow = (h == 0) & (v != 0)
    return torch.where(underflow, (torch.sign(v) * FP16_TINIEST).half(), h) if bool(underflow.any()) else h


def drop_tensors(obj: Any) -> Any:
    """obj without its tensors (nested dicts/lists kept): SparseML masks are the zeros of the weights, not data."""
    if isinstance(obj, dict):
        return {k: drop_tensors(v) for k, v in obj.items() if not isinstance(v, torch.Tensor)}
    if isinstance(obj, (list, tuple)):
        return [drop_tensors(v) for v in obj if not isinstance(v, torch.Tensor)]
    return obj


@dataclass(frozen=True)
class Rebuild:
    """A structure the yaml alone does not describe (channel widths, QAT wrappers, masks), rebuilt around the load."""

    applies: Callable[[dict], bool]
    before_load: Callable[[nn.Module, dict], None] | None = None
    after_load: Callable[[nn.Module, dict], None] | None = None


# Filled by higher layers (utils/sparsity/rebuild.py registers channel widths, recipe replay, channel masks), so
# checkpoint I/O never imports the sparsity stack. Registration order is the order they run in.
REBUILDS: dict[str, Rebuild] = {}


def register_rebuild(name: str, rebuild: Rebuild) -> None:
    """Add (or replace) one structure rebuild; called at import time by the module that owns the structure."""
    REBUILDS[name] = rebuild


def _needs_rebuild(ckpt: dict) -> bool:
    """Sparse, QAT or channel-pruned files carry structure beyond the yaml: without rebuild hooks they cannot load."""
    yaml_ = ckpt.get("yaml") or {}
    return bool(ckpt.get("recipe") or yaml_.get("channel_widths") or yaml_.get("channel_masks"))


def _run_hook(hook: Callable[[nn.Module, dict], None], model: nn.Module, ckpt: dict, path: str | Path) -> None:
    """A hook's refusal names the file it came from."""
    try:
        hook(model, ckpt)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


def model_from_checkpoint(ckpt: dict, path: str | Path = "checkpoint") -> nn.Module:
    """Build the model from the stored yaml and load weights; a mismatch says it's another architecture."""
    if _needs_rebuild(ckpt) and not REBUILDS:
        raise CheckpointError(f"{path}: a sparse/QAT/channel-pruned checkpoint needs the rebuild hooks of "
                              f"utils.sparsity.rebuild; import that module before loading it.")
    model = DetectionModel(ckpt["yaml"])
    hooks = [r for r in REBUILDS.values() if r.applies(ckpt)]
    for r in hooks:
        if r.before_load:
            _run_hook(r.before_load, model, ckpt, path)
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as e:
        first = [ln.strip() for ln in str(e).splitlines() if ln.strip()][1:2]
        raise CheckpointError(f"{path}: weights do not fit the model described by its own yaml ({first}). "
                              f"The file is damaged or from another architecture; re-export it.") from None
    for r in hooks:
        if r.after_load:
            _run_hook(r.after_load, model, ckpt, path)
    model.names = list(ckpt.get("names") or model.names)
    model.epoch = ckpt.get("epoch", -1)
    return model


def load_model(weights: str | Path, device: str | torch.device = "cpu", fuse: bool = False) -> nn.Module:
    """One entry point for every script: path to .pt (official or ours) -> eval-mode DetectionModel."""
    ckpt = load_checkpoint(weights)
    model = model_from_checkpoint(ckpt, weights)
    model.checkpoint_meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "ema")}
    model = model.to(device).float().eval()
    return model.fuse() if fuse else model


class CheckpointWriteError(CheckpointError):
    """A checkpoint that could not be written (disk full, read-only folder); any earlier file there is untouched."""


def atomic_save(obj: Any, path: str | Path) -> Path:
    """torch.save to a temp file in the same folder, fsync, then rename: readers never see a partial file.

    A failed write (disk full, read-only folder) raises CheckpointWriteError and leaves an earlier `path` as it was.
    """
    path = Path(path)
    try:
        with atomic_path(path, what="checkpoint") as tmp:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
    except AtomicWriteError as e:
        raise CheckpointWriteError(str(e)) from None
    return path


def save_checkpoint(path: str | Path, model: nn.Module, **meta: Any) -> Path:
    """Our format: plain tensors + metadata only, loadable with torch.load(weights_only=True)."""
    model = de_parallel(model)
    stride = getattr(model, "stride", None)
    ckpt = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "yaml": model.yaml, "names": list(getattr(model, "names", [])),
        "stride": stride.tolist() if isinstance(stride, torch.Tensor) else stride,
        "epoch": -1, "recipe": None, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    ckpt.update(meta)
    return atomic_save(ckpt, path)
