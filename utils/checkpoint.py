"""Checkpoints: safe loading of official Ultralytics .pt files and our own atomic, tensors-only format.

Official YOLOv5 .pt files pickle whole modules. We never import or run those classes: torch's weights-only
unpickler maps each allowlisted class name to an inert stand-in that only records its state, and we rebuild
the model from its yaml. Anything outside the allowlist is refused before it can run.
"""
from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

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


ONNX_ENGINES = ("onnxruntime", "onnx", "ort", "deepsparse", "ds", "openvino", "ov")


def resolve_weights(weights: str | Path | None, engine: str | None = None) -> str:
    """--weights as a local path: a zoo: stub becomes its mirror/SparseZoo file (.onnx for ONNX engines), else as is.

    Every script calls this first, so one resolver serves train, val, detect and export; a stub that cannot be found
    raises CheckpointError naming it and the mirror folder to fill.
    """
    if weights is None or not str(weights).startswith("zoo:"):
        return "" if weights is None else str(weights)
    from utils.sparsity.zoo import ZooError, resolve
    what = "onnx" if engine and engine.lower() in ONNX_ENGINES else "weights"
    try:
        return str(resolve(str(weights), what))
    except ZooError as e:
        raise CheckpointError(f"--weights {e}") from None


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dict without executing pickled code; refuses classes outside the allowlist."""
    path = Path(resolve_weights(path))
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
    """Checkpoint dict in our format, whichever kind the file is."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    if ckpt.get("format") == FORMAT:
        return ckpt
    return _official_to_ours(ckpt, path)


def model_from_checkpoint(ckpt: dict, path: str | Path = "checkpoint") -> nn.Module:
    """Build the model from the stored yaml and load weights; a mismatch says it's another architecture."""
    from models.yolo import DetectionModel

    model = DetectionModel(ckpt["yaml"])
    if model.yaml.get("channel_widths"):  # channel-pruned: reshape to the stored layout before the weights load
        from utils.sparsity.channel import apply_channel_widths
        apply_channel_widths(model)
    if ckpt.get("recipe"):  # sparse/QAT checkpoint: rebuild QAT wrappers before the weights can fit
        from utils.sparsity.manager import apply_recipe_structure
        apply_recipe_structure(model, ckpt["recipe"], ckpt.get("recipe_epoch"))
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as e:
        first = [ln.strip() for ln in str(e).splitlines() if ln.strip()][1:2]
        raise CheckpointError(f"{path}: weights do not fit the model described by its own yaml ({first}). "
                              f"The file is damaged or from another architecture; re-export it.") from None
    if model.yaml.get("channel_masks"):  # trained with channel masks (dense layout): drop the masked channels now
        from utils.sparsity.channel import remove_masked_channels
        remove_masked_channels(model)
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


_TORCH_WRITE_FAILURE = re.compile(r"PytorchStreamWriter|inline_container|unexpected pos|file write failed")


def atomic_save(obj: Any, path: str | Path) -> Path:
    """torch.save to a temp file in the same folder, fsync, then rename: readers never see a partial file.

    A failed write (disk full, read-only folder) raises CheckpointWriteError and leaves an earlier `path` as it was.
    """
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
        # the pid in the name lets a later save tell a dead writer's leftover from a live writer's file
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; checkpoints are meant to be shared
        os.replace(tmp, path)
    except BaseException as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) or (isinstance(e, RuntimeError) and _TORCH_WRITE_FAILURE.search(str(e))):
            raise _write_error(path, e) from None
        raise
    _fsync_dir(path.parent)  # make the rename itself survive a power cut
    return path


def _write_error(path: Path, e: BaseException) -> CheckpointWriteError:
    """One line: which file and folder, why, how much space is left, what to do, and that nothing was lost."""
    reason = (e.strerror or str(e)) if isinstance(e, OSError) else "the write failed part-way"
    folder = next((p for p in (path.parent, *path.parents) if p.exists()), None)
    try:
        free = f"{shutil.disk_usage(folder).free / 1e6:.0f} MB free there" if folder else "folder missing"
    except OSError:
        free = "free space unknown"
    kept = f"the previous {path.name} is intact" if path.is_file() else "no earlier file was touched"
    return CheckpointWriteError(f"cannot write checkpoint {path.name} in {path.parent}: {reason} ({free}). "
                                f"Free disk space or choose a writable folder (e.g. --project); {kept}.")


def _remove_stale_temps(path: Path) -> None:
    """Delete temp files of `path` left by writers that were killed mid-save (their pid is gone, or is ours)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[^.]+\.tmp")
    for f in path.parent.glob(f".{path.name}.*.tmp"):
        m = pattern.fullmatch(f.name)
        if m and (int(m.group(1)) == os.getpid() or not _pid_alive(int(m.group(1)))):
            f.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    """Signal 0 probes a pid without touching it: is the writer that owns a temp file still running?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    """fsync a directory entry; some filesystems refuse, which only costs durability, never correctness."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, model: nn.Module, **meta: Any) -> Path:
    """Our format: plain tensors + metadata only, loadable with torch.load(weights_only=True)."""
    model = getattr(model, "module", model)  # unwrap DDP
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
