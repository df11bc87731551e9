"""Model variants to benchmark: dense FP32, pruned FP32 (unstructured or 1xN blocks), INT8 (pluggable), or files.

Engine speed depends on layer shapes, the sparsity pattern and the precision, not on what the weights were trained
to, so pruning a randomly initialised or an official checkpoint one-shot gives the speed of a trained sparse model.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from utils.checkpoint import load_model
from utils.engines import check_onnx_file, reads_exported_files
from utils.export import (
    DEFAULT_OPSET,
    export_metadata,
    export_onnx,
    onnx_conv_sparsity,
    onnx_precision,
    prepare_model,
)
from utils.export.head import model_head, strip_decode
from utils.export.pixels import pixel_input
from utils.export.int8 import int8_format_for, qat_int8_exporter, sample_int8_exporter
from utils.export.prepare import is_qat
from models.yolo import DetectionModel
from utils.sparsity.calibration import calibration_batches as calibration_files_batches
from utils.sparsity.channel import WIDTHS_KEY, ChannelGraph
from utils.sparsity.measure import global_sparsity
from utils.sparsity.methods import METHODS, PruneContext, get_method
from utils.sparsity.oneshot import bn_recalibrate
from utils.sparsity.ptq import calibration_batches

# Exporter(model, file, imgsz, batch_size, fmt) -> path of an ONNX file; fmt is the INT8 form the engine runs best
# ('qdq', 'qdq-inputs' or 'convinteger', utils.export.int8.int8_format_for) or 'fp32'.
Int8Exporter = Callable[[nn.Module, Path, tuple[int, int], int, str], Path]
# Post-training INT8 (utils.export.int8.sample_int8_exporter) by default; another can be plugged in with
# register_int8_exporter.
_INT8_EXPORTERS: list[Int8Exporter] = []
FILE_DENSE_BELOW = 0.10
# median best-class confidence of the cells a trained head passes on objectness (official yolov5n at 640: 0.96 on
# bus.jpg, 0.98 on zidane.jpg)
TOP_CLASS = 0.96
CLASS_LOGIT_P95 = 8.0  # sigmoid 0.9997: confident, far from float32 saturation


class NotApplicable(RuntimeError):
    """This variant cannot run on that engine (e.g. an ONNX file in PyTorch); the row is reported as n/a."""


def register_int8_exporter(fn: Int8Exporter) -> Int8Exporter:
    """Make --quantize build INT8 variants with `fn` (last registered wins); usable as a decorator."""
    _INT8_EXPORTERS.append(fn)
    return fn


def find_int8_exporter(images: list[str] | None = None) -> Int8Exporter | None:
    """The last registered INT8 exporter, else post-training QDQ/ConvInteger calibrated on `images` (default: the
    sample images)."""
    return _INT8_EXPORTERS[-1] if _INT8_EXPORTERS else sample_int8_exporter(images)


def fp32_exporter(opset: int = DEFAULT_OPSET) -> Int8Exporter:
    """Static-shape FP32 ONNX through export.py's own path (BN folded, Detect decoded, metadata attached)."""
    def export(model: nn.Module, file: Path, imgsz: tuple[int, int], batch_size: int, fmt: str = "fp32") -> Path:
        meta = export_metadata(model, imgsz, batch_size, False, global_sparsity(model))
        return export_onnx(prepare_model(model), file, imgsz, batch_size, dynamic=False, opset=opset, metadata=meta)
    return export


@dataclass
class Variant:
    """One model to time on every engine: an in-memory model (exported on demand per batch size) or given files."""

    name: str
    group: str
    sparsity: float
    pattern: str = "dense"
    precision: str = "FP32"
    model: nn.Module | None = None
    onnx: Path | None = None
    ir: Path | None = None
    exporter: Int8Exporter | None = None
    source: str = ""
    head: str = "decoded"  # "raw": files built here end at Detect's convs; the host decodes survivors (--head raw)
    pixels: str | None = None  # files built here take uint8 pixels in this layout (--uint8-input, --nhwc)
    _files: dict[tuple[int, str], Path] = field(default_factory=dict, repr=False)
    _torch: nn.Module | None = field(default=None, repr=False)

    def weights_for(self, engine: str, batch_size: int, imgsz: tuple[int, int], workdir: Path) -> nn.Module | Path:
        """What load_engine needs for this engine: a fused model for torch, an ONNX/IR file for the others."""
        if not reads_exported_files(engine):
            if self.model is None:
                raise NotApplicable("PyTorch runs checkpoints only; this variant is an exported file")
            if self.precision != "FP32":
                raise NotApplicable("PyTorch rows are FP32; INT8 variants run on the ONNX engines")
            if self._torch is None:
                self._torch = prepare_model(self.model)  # BN folded, same graph the ONNX engines get
            return self._torch
        if engine == "openvino" and self.ir is not None:
            return self.ir
        if self.onnx is not None:
            return self.onnx
        if self.model is None or self.exporter is None:
            raise NotApplicable(f"no ONNX file for {self.name}")
        fmt = int8_format_for(engine) if self.precision == "INT8" else "fp32"
        if (batch_size, fmt) not in self._files:
            workdir.mkdir(parents=True, exist_ok=True)
            tag = "" if fmt == "fp32" else f"_{fmt}"
            file = workdir / f"{slug(self.name)}{tag}_b{batch_size}_{imgsz[0]}x{imgsz[1]}.onnx"
            # a copy: an INT8 exporter may insert fake-quant modules; the FP32 twin must not change
            out = Path(self.exporter(copy.deepcopy(self.model), file, imgsz, batch_size, fmt))
            out = strip_decode(out, model_head(self.model)) if self.head == "raw" else out
            self._files[batch_size, fmt] = pixel_input(out, self.pixels) if self.pixels else out
        return self._files[batch_size, fmt]


def slug(text: str) -> str:
    """File-name-safe form of a variant name."""
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


def sparsity_label(sparsity: float, pattern: str, dense_below: float = 0.01) -> str:
    """'dense', 'pruned80' or 'pruned80-1x4': how the seed tables name model types."""
    if sparsity < dense_below:
        return "dense"
    return f"pruned{round(sparsity * 100)}" + ("" if pattern in ("unstructured", "dense") else f"-{pattern}")


def model_variant(model: nn.Module, group: str, pattern: str, opset: int, source: str) -> Variant:
    """A variant for an in-memory FP32 model, its sparsity measured rather than assumed."""
    s = global_sparsity(model)
    pattern = "dense" if s < 0.01 else pattern
    return Variant(f"{group} {sparsity_label(s, pattern)} FP32", group, s, pattern, "FP32", model=model,
                   exporter=fp32_exporter(opset), source=source)


def calibrate_bn(model: nn.Module, size: int = 640, batches: int = 2) -> nn.Module:
    """Re-estimate BN statistics on the sample images so activations keep the O(1) magnitudes of a trained model,
    then calibrate the detection head (calibrate_head) on them, at the benchmark's size.

    A fresh yolov5n shrinks activations to ~1e-9 by the neck, and 80% one-shot pruning leaves whole layers
    outputting exact zeros. Engines should not be timed on values no trained model produces (denormal or all-zero
    fast paths, NMS with no candidates), so every model built here gets BN statistics that normalise them again.
    """
    images = head_images(size)  # real pictures: BN statistics of noise let real inputs grow huge layer by layer
    bn_recalibrate(model, list(images.split(2))[:batches], batches)
    return calibrate_head(model.eval(), images)


def head_images(size: int) -> torch.Tensor:
    """The shared sample images letterboxed to size x size (noise when they are missing)."""
    return torch.cat(calibration_batches((size, size)))


def calibrate_head(model: nn.Module, x: torch.Tensor, candidates: int = 100, conf: float = 0.25,
                   top_class: float = TOP_CLASS) -> nn.Module:
    """Shift objectness and class biases so about `candidates` boxes per image pass `conf`, as a trained model's do.

    Post-processing time grows with the boxes that reach NMS. A random head lets thousands through (yolov5s at 640:
    NMS ~85 ms) or none at all, which would time NMS on detections no trained model makes; 100 per image is
    generous for a trained YOLOv5 at conf 0.25 (yolov5n: 41 on bus.jpg). The head's output convs are first scaled
    so score logits spread like a trained head's (random ones span hundreds, so counts jump from 0 to thousands
    between images); layer shapes and sparsity are untouched. Class logits are then shifted so a cell's best class
    is as confident as a trained head's (`top_class`, the median), and objectness alone sets the count: otherwise
    low class scores let 2-50x more cells pass objectness than pass the score (a trained yolov5n: 1.1-1.2x), and
    post-processing decodes them all.
    """
    detect, raw = model.model[-1], []
    hooks = [conv.register_forward_hook(lambda _m, _i, out: raw.append(out.detach().float())) for conv in detect.m]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    logits = torch.cat([r.view(len(x), detect.na, detect.no, -1).transpose(2, 3).reshape(len(x), -1, detect.no)
                        for r in raw], 1)  # (B, boxes, 5 + nc) before the sigmoid (scores saturate in float32)
    scale = 2.0 / float(logits[..., 4:].std().clamp_min(1e-12))  # a trained head's score logits spread ~O(1)
    obj = logits[..., 4] * scale
    gain, shift, cls = _class_transform(logits[..., 5:] * scale, obj, candidates, top_class)

    def passing(delta: float) -> float:
        return float(((torch.sigmoid(obj + delta) * torch.sigmoid(cls)) > conf).sum(1).float().mean())

    lo, hi = -1e4, 1e4
    for _ in range(60):  # bisection: passing() only grows with delta
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if passing(mid) < candidates else (lo, mid)
    with torch.no_grad():
        for conv in detect.m:
            conv.weight *= scale
            conv.bias *= scale
            weight, bias = conv.weight.view(detect.na, detect.no, -1), conv.bias.view(detect.na, -1)
            weight[:, 5:] *= gain
            bias[:, 5:] *= gain
            bias[:, 5:] += shift
            bias[:, 4] += (lo + hi) / 2
    return model


def _class_transform(cls: torch.Tensor, obj: torch.Tensor, candidates: int,
                     top_class: float) -> tuple[float, float, torch.Tensor]:
    """(gain, shift, each cell's best class logit after them): among the cells objectness ranks first, the median best
    class gets confidence `top_class` and the 95th percentile stays below saturation (float32 sigmoid is 1.0 from
    ~17 on, where classes tie and engines break the tie differently)."""
    if cls.shape[-1] == 0:  # no class scores: objectness alone
        return 1.0, 0.0, torch.full_like(obj, 50.0)
    best = cls.amax(-1)
    first = best.gather(1, obj.topk(min(candidates, obj.shape[1]), dim=1).indices).flatten()
    mid, p95 = float(first.median()), float(torch.quantile(first, 0.95))
    target = math.log(top_class / (1 - top_class))
    gain = min(1.0, (CLASS_LOGIT_P95 - target) / (p95 - mid)) if p95 > mid else 1.0
    shift = target - mid * gain
    return gain, shift, best * gain + shift


def data_recalibration(files: list[str], size: int, images: int = 64) -> Callable[[nn.Module], nn.Module]:
    """benchmark.py --data: BN statistics of a pruned copy re-estimated on the dataset's train images, head untouched
    (the trained head's scores are what its mAP measures)."""
    def recalibrate(model: nn.Module) -> nn.Module:
        batches = calibration_files_batches(files, size, batch_size=8, n_images=images)
        bn_recalibrate(model, batches, len(batches))
        return model.eval()
    return recalibrate


def pruned_models(base: nn.Module, group: str, levels: list[float], blocks: list[int], method: str, opset: int,
                  source: str, calib_size: int = 640,
                  calibrate: Callable[[nn.Module], nn.Module] | None = None) -> list[Variant]:
    """Dense once, then one pruned copy per (sparsity level, block size); level 0 is the dense model itself."""
    out = [model_variant(copy.deepcopy(base).eval(), group, "dense", opset, source)] if 0 in levels else []
    for level in (lv for lv in levels if lv > 0):
        for block in blocks:
            m = copy.deepcopy(base).eval()
            name = "blocks" if block > 1 else method
            get_method(name).prune(m, level, PruneContext(options={"block": block}))
            calibrate(m) if calibrate else calibrate_bn(m, calib_size)
            pattern = f"1x{block}" if block > 1 else "unstructured"
            how = f"one-shot {method}" if block == 1 else f"one-shot 1x{block} blocks"
            out.append(model_variant(m, group, pattern, opset, f"{source}, {how}"))
    return out


def channel_variants(base: nn.Module, group: str, fractions: list[float], allocation: str, levels: list[float],
                     blocks: list[int], method: str, opset: int, source: str, calib_size: int = 640,
                     calibrate: Callable[[nn.Module], nn.Module] | None = None) -> list[Variant]:
    """Per FLOPs fraction: the channel-pruned (smaller dense) model, plus its unstructured/1xN pruned copies."""
    out = []
    for f in fractions:
        m = copy.deepcopy(base).eval()
        rep = METHODS["channel"].prune(m, f, PruneContext(imgsz=calib_size, options={"importance": "l1",
                                                                                     "allocation": allocation}))
        calibrate(m) if calibrate else calibrate_bn(m, calib_size)
        tag = f"cp{round(f * 100)}"
        how = f"{source}, {tag}: {1 - rep['macs_left']:.0%} of conv FLOPs removed by channels ({allocation})"
        for v in pruned_models(m, f"{group} {tag}", levels, blocks, method, opset, how, calib_size, calibrate):
            v.group, v.name = group, v.name.replace(" dense FP32", " FP32")  # ratio against the group's dense row
            out.append(v)
    return out


def int8_variants(fp32: list[Variant], exporter: Int8Exporter) -> list[Variant]:
    """One INT8 twin per in-memory FP32 variant (dense INT8, pruned INT8), exported by the plugged-in exporter."""
    return [Variant(v.name.replace(" FP32", " INT8"), v.group, v.sparsity, v.pattern, "INT8", model=v.model,
                    exporter=exporter, source=f"{v.source}, INT8 export")
            for v in fp32 if v.model is not None and v.precision == "FP32"]


def channel_tag(model: nn.Module) -> str:
    """'cp51' for a channel-pruned checkpoint (51% of conv MACs removed against its yaml's full widths), else ''."""
    cfg = dict(getattr(model, "yaml", None) or {})
    if not cfg.pop(WIDTHS_KEY, None):
        return ""
    full = ChannelGraph(DetectionModel(cfg, nc=model.nc).eval()).macs()
    return f"cp{round(100 * (1 - ChannelGraph(copy.deepcopy(model).eval()).macs() / full))}"


def checkpoint_variant(model: nn.Module, group: str, opset: int, source: str) -> Variant:
    """A loaded checkpoint: FP32 as it is, or a QAT model as INT8 with its learned scales (per-engine form).

    A channel-pruned checkpoint is named by the MACs it removed (d cp51 FP32), not 'dense': it must not serve as
    the dense baseline of its own ratios.
    """
    if not is_qat(model):
        v = model_variant(model, group, "unstructured", opset, source)
    else:
        s = global_sparsity(model)
        v = Variant(f"{group} {sparsity_label(s, 'unstructured')} INT8", group, s,
                    "dense" if s < 0.01 else "unstructured", "INT8", model=model, exporter=qat_int8_exporter(),
                    source=f"{source} (QAT)")
    tag = channel_tag(model)
    if tag:
        label = v.name[len(group) + 1:]  # 'dense FP32', 'pruned40 INT8', ...
        v.name = f"{group} {tag} {label.removeprefix('dense ')}"
    return v


def file_group(path: Path) -> str:
    """A file's name in the tables: its stem, or its training run's folder for runs/train/NAME/weights/best.pt."""
    if path.is_file() and path.parent.name == "weights" and path.stem in ("best", "last"):
        return path.parent.parent.name + ("" if path.stem == "best" else "-last")
    return path.stem if path.is_file() else path.name


def file_variant(path: Path, opset: int) -> Variant:
    """A variant for a user file: .pt loads as a model; .onnx / OpenVINO IR are timed as they are."""
    group = file_group(path)
    if path.suffix in (".pt", ".pth"):
        return checkpoint_variant(load_model(str(path)), group, opset, str(path))
    if path.suffix == ".onnx":
        check_onnx_file(path)  # one clear line for a file that is not ONNX, before onnx.load fails on it
        # INT8 weights land on the zero point by rounding (~7% in a dense QAT yolov5n): call < 10% dense
        s, prec = onnx_conv_sparsity(path)["sparsity"], onnx_precision(path)
        dense = s < FILE_DENSE_BELOW
        return Variant(f"{group} {sparsity_label(s, 'unstructured', FILE_DENSE_BELOW)} {prec}", group, s,
                       "dense" if dense else "unstructured", prec, onnx=path, source=str(path))
    if path.suffix == ".xml" or path.is_dir():
        return Variant(f"{group} OpenVINO IR", group, float("nan"), "?", "?", ir=path, source=str(path))
    raise ValueError(f"{path}: unsupported weights; pass a .pt checkpoint, an .onnx file or an OpenVINO IR")
