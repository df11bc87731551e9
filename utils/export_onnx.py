"""Export a detector to ONNX (and OpenVINO IR) with its metadata, and check the file against PyTorch."""
from __future__ import annotations

import copy
import datetime
import gzip
import re
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from utils.engines.base import as_hw
from utils.engines.metadata import onnx_metadata_props

DEFAULT_OPSET = 13
INPUT_NAME, OUTPUT_NAME = "images", "output0"
# weight input index per conv op type; quantized ops also name the weight zero point so "zero" means == zero point
CONV_WEIGHT_INPUTS = {"Conv": (1, None), "ConvInteger": (1, 3), "QLinearConv": (3, 5)}


class _FirstOutput(nn.Module):
    """Export only the decoded prediction even for models whose eval forward returns (pred, raw_heads)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        return y[0] if isinstance(y, (list, tuple)) else y


def prepare_model(model: nn.Module, fuse: bool = True) -> nn.Module:
    """Float32 eval copy with BN folded and every Detect in export mode (decoded tensor only)."""
    model = copy.deepcopy(model).float().eval().requires_grad_(False)
    if fuse and hasattr(model, "fuse"):
        with torch.no_grad():  # folded weights must stay leaf tensors, not autograd results
            model.fuse()
    for m in _detect_heads(model):
        m.export = True
    return model


def _detect_heads(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).__name__ == "Detect"]


def _reset_grids(model: nn.Module) -> None:
    """Drop cached grids so tracing records them as shape-dependent ops, not constants of the last input size."""
    for m in _detect_heads(model):
        m.grid = [torch.empty(0) for _ in m.grid]
        m.anchor_grid = [torch.empty(0) for _ in m.anchor_grid]


def model_sparsity(model: nn.Module) -> float:
    """Global fraction of zeros over prunable weights, as the sparsity tools measure it."""
    try:
        from utils.sparsity.measure import global_sparsity
    except ImportError:  # standalone fallback: Conv2d/Linear weights
        ws = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        total = sum(w.numel() for w in ws)
        return sum(int((w == 0).sum()) for w in ws) / total if total else 0.0
    return float(global_sparsity(model))


def recipe_summary(recipe: str | None) -> str:
    """One line naming the modifiers of a SparseML recipe, so a deployed file says how it was made."""
    if not recipe:
        return "none"
    mods = re.findall(r"!(\w+Modifier)", str(recipe))
    if not mods:
        return "custom recipe (no modifiers found)"
    counts: dict[str, int] = {}
    for m in mods:
        counts[m] = counts.get(m, 0) + 1
    return ", ".join(f"{k} x{v}" if v > 1 else k for k, v in counts.items())


def _checkpoint_recipe(model: nn.Module) -> str | None:
    """Recipe text stored in our checkpoints (load_model keeps it in model.checkpoint_meta); None for official ones."""
    return (getattr(model, "checkpoint_meta", None) or {}).get("recipe") or getattr(model, "recipe", None)


def export_metadata(model: nn.Module, imgsz: tuple[int, int], batch_size: int, dynamic: bool,
                    sparsity: float, recipe: str | None = None) -> dict[str, Any]:
    """What detect/val need (names, stride, imgsz) plus provenance (sparsity, recipe, date)."""
    stride = getattr(model, "stride", torch.tensor([32]))
    names = getattr(model, "names", None) or []
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    return {
        "description": "yolov5-sparse detector: output (batch, anchors, 5+nc) xywh pixels, objectness, class scores",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "stride": int(torch.as_tensor(stride).max()),
        "names": list(names),
        "imgsz": list(imgsz),
        "batch": batch_size,
        "dynamic": dynamic,
        "sparsity": round(float(sparsity), 4),
        "recipe": recipe_summary(recipe),
    }


def export_onnx(model: nn.Module, file: str | Path, imgsz: int | tuple[int, int] = 640, batch_size: int = 1,
                dynamic: bool = False, opset: int = DEFAULT_OPSET, metadata: dict[str, Any] | None = None,
                simplify: bool = False) -> Path:
    """Trace with the legacy TorchScript exporter (dynamo needs onnxscript, which breaks our pins) and add metadata."""
    import onnx

    file = Path(file)
    h, w = as_hw(imgsz)
    x = torch.zeros(batch_size, 3, h, w)
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, OUTPUT_NAME: {0: "batch", 1: "anchors"}}
    _reset_grids(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shape-dependent python ints are expected here
        if is_qat(model):
            _export_qat_int8(model, file, x, axes if dynamic else None)
        else:
            torch.onnx.export(_FirstOutput(model), x, str(file), opset_version=opset, do_constant_folding=True,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes=axes if dynamic else None, dynamo=False)
    proto = onnx.load(str(file))
    onnx.checker.check_model(proto)
    if simplify:
        proto = simplify_onnx(proto)
    del proto.metadata_props[:]
    for k, v in onnx_metadata_props(metadata or {}).items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(file))
    return file


def is_qat(model: nn.Module) -> bool:
    """A model trained with a QuantizationModifier carries FakeQuantize modules."""
    return any(type(m).__name__ == "FakeQuantize" for m in model.modules())


def _export_qat_int8(model: nn.Module, file: Path, x: torch.Tensor, dynamic_axes: dict | None) -> None:
    """QAT -> INT8 ONNX (ConvInteger), SparseML's converter: the form DeepSparse and ONNX Runtime both run as INT8."""
    from utils.sparsity.compat import import_sparseml, onnx_export_kwargs

    import_sparseml()  # applies the torch 2.13 QConfig shim first
    from sparseml.pytorch.utils import ModuleExporter

    ModuleExporter(model, output_dir=str(file.parent)).export_onnx(
        x, name=file.name, convert_qat=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_axes=dynamic_axes, **onnx_export_kwargs(for_sparseml=True))


def simplify_onnx(proto):
    """onnx-simplifier when installed (optional: it does not install against our pins); else the graph unchanged."""
    try:
        import onnxsim
    except ImportError:
        print("export: --simplify skipped, onnxsim is not installed (pip install onnxsim)")
        return proto
    simplified, ok = onnxsim.simplify(proto)
    return simplified if ok else proto


def _initializers(proto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def _weight_source(name: str, producers: dict, inits: dict) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Weight array and its zero point, looking through a DequantizeLinear (QDQ graphs) when there is one."""
    if name in inits:
        return inits[name], None
    node = producers.get(name)
    if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in inits:
        zp = inits.get(node.input[2]) if len(node.input) > 2 else None
        return inits[node.input[0]], zp
    return None, None


def _count_zeros(w: np.ndarray, zp: np.ndarray | None) -> int:
    """Weights equal to their zero point (0 for float; per-tensor or per-output-channel for INT8)."""
    if zp is None:
        return int((w == 0).sum())
    zp = np.asarray(zp)
    if zp.ndim == 1 and zp.size == w.shape[0]:
        zp = zp.reshape(-1, *([1] * (w.ndim - 1)))
    return int((w == zp).sum())


def onnx_conv_sparsity(file: str | Path) -> dict[str, Any]:
    """Zeros in the conv weights stored in an ONNX file: proves pruning survived BN folding and export."""
    import onnx

    proto = onnx.load(str(file))
    inits = _initializers(proto)
    producers = {o: n for n in proto.graph.node for o in n.output}
    zeros = total = 0
    layers = []
    for node in proto.graph.node:
        if node.op_type not in CONV_WEIGHT_INPUTS:
            continue
        wi, zi = CONV_WEIGHT_INPUTS[node.op_type]
        w, zp = _weight_source(node.input[wi], producers, inits)
        if w is None:
            continue
        if zi is not None and len(node.input) > zi and node.input[zi] in inits:
            zp = inits[node.input[zi]]
        z = _count_zeros(w, zp)
        zeros, total = zeros + z, total + w.size
        layers.append((node.name, z / w.size))
    return {"zeros": zeros, "total": total, "sparsity": zeros / total if total else 0.0, "layers": layers}


def export_openvino(onnx_file: Path, metadata: dict[str, Any], out_dir: Path | None = None) -> Path:
    """ONNX -> OpenVINO IR folder (<stem>_openvino_model/<stem>.xml/.bin + <stem>.yaml metadata), weights kept f32."""
    import openvino as ov
    import yaml

    out_dir = out_dir or onnx_file.with_name(f"{onnx_file.stem}_openvino_model")
    out_dir.mkdir(parents=True, exist_ok=True)
    xml = out_dir / f"{onnx_file.stem}.xml"
    ov.save_model(ov.convert_model(str(onnx_file)), str(xml), compress_to_fp16=False)  # fp16 weights cost accuracy
    meta = dict(metadata)
    meta["names"] = {i: n for i, n in enumerate(meta.get("names", []))}  # YOLOv5's IR side-file layout
    with open(xml.with_suffix(".yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(meta, f, sort_keys=False)
    return out_dir


def verify_onnx(model: nn.Module, onnx_file: Path, batch: np.ndarray) -> dict[str, float]:
    """Run the torch model and the ONNX file (ONNX Runtime) on the same batch and compare predictions."""
    from utils.engines import load_engine

    a = load_engine(model, engine="torch")(batch)
    b = load_engine(onnx_file, engine="onnxruntime")(batch)
    diff = np.abs(a - b)
    max_pred = float(np.abs(a).max())
    return {"max_abs": float(diff.max()), "max_abs_xywh": float(diff[..., :4].max()),
            "max_abs_scores": float(diff[..., 4:].max()), "max_pred": max_pred,
            "max_rel": float(diff.max()) / max(max_pred, 1e-9), **match_detections(a, b)}


def match_detections(a: np.ndarray, b: np.ndarray, conf: float = 0.25, iou: float = 0.45) -> dict[str, float]:
    """INT8 outputs differ numerically; what must agree is the detections after NMS (same class, IoU >= 0.5)."""
    from utils.boxes import box_iou
    from utils.nms import non_max_suppression

    da, db = (non_max_suppression(torch.from_numpy(np.ascontiguousarray(p)).float(), conf, iou) for p in (a, b))
    n_a = sum(len(d) for d in da)
    n_b = sum(len(d) for d in db)
    matched, px = 0, 0.0
    for x, y in zip(da, db):
        if not len(x) or not len(y):
            continue
        ious = box_iou(x[:, :4], y[:, :4]) * (x[:, 5:6] == y[:, 5].unsqueeze(0))
        best, j = ious.max(1)
        ok = best >= 0.5
        matched += int(ok.sum())
        if ok.any():
            px = max(px, float((x[ok, :4] - y[j[ok], :4]).abs().max()))
    return {"dets_torch": n_a, "dets_onnx": n_b, "dets_matched": matched, "max_box_px": px}


def verify_line(v: dict[str, float], source: str) -> str:
    """One line a user can judge: relative error for float files, matching detections for every file."""
    return (f"export: ONNX Runtime vs PyTorch on {source}: max abs diff {v['max_abs']:.3g} "
            f"({v['max_rel']:.2e} relative; boxes {v['max_abs_xywh']:.3g} px, scores {v['max_abs_scores']:.3g}); "
            f"detections at conf 0.25: {v['dets_matched']}/{v['dets_torch']} matched by ONNX "
            f"({v['dets_onnx']} found; same class, IoU >= 0.5, max box diff {v['max_box_px']:.2g} px)")


def load_image_batch(path: Path, imgsz: tuple[int, int]) -> np.ndarray:
    """BGR file -> letterboxed (no auto padding) float32 NCHW RGB batch of one, the way detect feeds engines."""
    import cv2

    from utils.augmentations import letterbox, to_blob

    im = cv2.imread(str(path))
    if im is None:
        raise FileNotFoundError(f"{path}: cannot read image")
    return to_blob([letterbox(im, imgsz, auto=False)[0]])


def file_size(path: Path, compress: bool = True) -> tuple[int, int | None]:
    """Raw and gzip -9 bytes; sparse weights compress, which is how sparsity shows up in download size."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    raw = sum(p.stat().st_size for p in files)
    gz = sum(len(gzip.compress(p.read_bytes(), compresslevel=9)) for p in files) if compress else None
    return raw, gz


def size_table(paths: list[Path]) -> dict[str, tuple[int, int | None]]:
    """Raw and gzip -9 bytes per path (folders raw only: gzip -9 of sparse weights costs seconds per file)."""
    return {p.name + ("/" if p.is_dir() else ""): file_size(p, compress=not p.is_dir()) for p in paths}


def format_sizes(sizes: dict[str, tuple[int, int | None]]) -> str:
    """Plain-text table in MB with the gzip ratio, which is where unstructured sparsity pays off in downloads."""
    rows = [f"{'file':<40} {'raw MB':>9} {'gzip -9 MB':>11} {'ratio':>6}"]
    for name, (raw, gz) in sizes.items():
        packed = f"{gz / 1e6:>11.2f} {gz / max(raw, 1):>6.2f}" if gz is not None else f"{'-':>11} {'-':>6}"
        rows.append(f"{name:<40} {raw / 1e6:>9.2f} {packed}")
    return "\n".join(rows)


def verification_image(imgsz: tuple[int, int]) -> tuple[np.ndarray, str]:
    """bus.jpg from the shared assets when present, else a fixed random image (still a numeric check)."""
    from utils.assets import asset

    try:
        path = asset("images/bus.jpg")
    except FileNotFoundError:
        rng = np.random.default_rng(0)
        return rng.random((1, 3, *imgsz), dtype=np.float32), "random image (bus.jpg asset not found)"
    return load_image_batch(path, imgsz), str(path)


def output_path(weights: Path, suffix: str = ".onnx", log=print) -> Path:
    """Next to the weights (Ultralytics convention), unless that folder is read-only: then runs/export/exp*/."""
    from utils.files import increment_path
    from utils.labels import is_writable_dir

    if is_writable_dir(weights.parent):
        return weights.with_suffix(suffix)
    out = increment_path(Path("runs/export/exp"), mkdir=True) / weights.with_suffix(suffix).name
    log(f"export: {weights.parent} is read-only, writing to {out.parent} instead")
    return out


def export_weights(weights: str | Path, include: tuple[str, ...] = ("onnx",), imgsz: int | tuple[int, int] = 640,
                   batch_size: int = 1, dynamic: bool = False, opset: int = DEFAULT_OPSET, simplify: bool = False,
                   device: str = "cpu", verify: bool = True, log=print,
                   prune: Callable[[nn.Module], str] | None = None) -> dict[str, Any]:
    """Checkpoint -> ONNX (+ OpenVINO) next to it, with metadata, a sparsity check, a numeric check and sizes.

    prune: optional one-shot step on the loaded model (export.py --sparsity); it returns a tag for the file name
    (yolov5n_obc50.onnx) so a pruned export never overwrites the dense one.
    """
    from utils.augmentations import check_img_size
    from utils.checkpoint import load_model

    weights = Path(weights)
    model = load_model(str(weights), device=device, fuse=False)
    hw = tuple(check_img_size(list(as_hw(imgsz)), s=int(model.stride.max())))  # round up and warn
    tag = prune(model) if prune is not None else ""
    sparsity = model_sparsity(model)
    meta = export_metadata(model, hw, batch_size, dynamic, sparsity, _checkpoint_recipe(model))
    prepared = prepare_model(model)
    target = weights.with_name(f"{weights.stem}{tag}{weights.suffix}")
    onnx_file = export_onnx(prepared, output_path(target, log=log), hw, batch_size, dynamic, opset, meta, simplify)
    result: dict[str, Any] = {"files": [onnx_file], "sparsity": sparsity, "metadata": meta}
    shape = "dynamic" if dynamic else f"static {batch_size}x3x{hw[0]}x{hw[1]}"
    log(f"export: wrote {onnx_file} (opset {opset}, {shape})")
    result["onnx_sparsity"] = onnx_conv_sparsity(onnx_file)["sparsity"]
    log(f"export: conv weight sparsity {sparsity:.4f} in PyTorch (global, prunable weights), "
        f"{result['onnx_sparsity']:.4f} measured in the ONNX initializers")
    if verify:
        batch, source = verification_image(hw)
        # against the unfused model, so BN folding is checked too
        result["verify"] = verify_onnx(model, onnx_file, np.repeat(batch, batch_size, 0))
        log(verify_line(result["verify"], source))
    if "openvino" in include:
        ov_dir = export_openvino(onnx_file, meta)
        result["files"].append(ov_dir)
        log(f"export: wrote {ov_dir}/ (OpenVINO IR, f32 weights)")
    result["sizes"] = size_table([weights, *result["files"]])
    log(format_sizes(result["sizes"]))
    return result
