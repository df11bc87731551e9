"""YOLOv5 detection model built from a yaml layer table.

Usage:
    python models/yolo.py --cfg yolov5s.yaml          # print the model summary (layers, parameters, GFLOPs at 640)
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import math
import sys
from copy import deepcopy
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from models.common import C3, SPP, SPPF, Bottleneck, Concat, Conv, Focus  # noqa: E402
from utils.augmentations import make_divisible  # noqa: E402
from utils.torch_utils import fuse_conv_and_bn, model_info  # noqa: E402


class Detect(nn.Module):
    """Three 1x1 output convs that turn P3/P4/P5 features into anchor-relative boxes, objectness and class scores."""

    stride: torch.Tensor | None = None  # set by DetectionModel from a dummy forward
    export = False  # True: eval forward returns only the decoded tensor (ONNX)

    def __init__(self, nc: int = 80, anchors: list | tuple = (), ch: list | tuple = (), inplace: bool = True):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.grid = [torch.empty(0) for _ in range(self.nl)]
        self.anchor_grid = [torch.empty(0) for _ in range(self.nl)]
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.inplace = inplace

    def forward(self, x: list[torch.Tensor]):
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if not self.training:
                z.append(self._decode(x[i], i, nx, ny))
        if self.training:
            return x
        return torch.cat(z, 1) if self.export else (torch.cat(z, 1), x)

    def _decode(self, p: torch.Tensor, i: int, nx: int, ny: int) -> torch.Tensor:
        """Raw map -> (bs, na*ny*nx, no) with xywh in input pixels and sigmoid scores."""
        if self.grid[i].shape[2:4] != p.shape[2:4]:
            self.grid[i], self.anchor_grid[i] = self._make_grid(nx, ny, i)
        y = p.sigmoid()
        xy, wh, conf = y.split((2, 2, self.nc + 1), 4)
        xy = (xy * 2 + self.grid[i]) * self.stride[i]
        wh = (wh * 2) ** 2 * self.anchor_grid[i]
        return torch.cat((xy, wh, conf), 4).view(p.shape[0], self.na * nx * ny, self.no)

    def _make_grid(self, nx: int, ny: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell offsets (shifted by -0.5 so xy*2-0.5 spans neighbours) and anchor sizes in pixels."""
        d, t = self.anchors[i].device, self.anchors[i].dtype
        shape = 1, self.na, ny, nx, 2
        yv, xv = torch.meshgrid(torch.arange(ny, device=d, dtype=t), torch.arange(nx, device=d, dtype=t), indexing="ij")
        grid = torch.stack((xv, yv), 2).expand(shape) - 0.5
        anchor_grid = (self.anchors[i] * self.stride[i]).view((1, self.na, 1, 1, 2)).expand(shape)
        return grid, anchor_grid


MODULES: dict[str, type[nn.Module]] = {
    m.__name__: m for m in (Conv, Bottleneck, C3, SPPF, SPP, Focus, Concat, Detect)
}
MODULES.update({"nn.Upsample": nn.Upsample, "nn.BatchNorm2d": nn.BatchNorm2d, "nn.Identity": nn.Identity})
CHANNEL_MODULES = (Conv, Bottleneck, C3, SPPF, SPP, Focus)
MAX_PARAMETERS = 200_000_000  # yolov5x is 86.7M; far beyond that a yaml is a mistake (or a memory bomb)


def _literal(a, names: dict):
    """Yaml args are literals or the names nc/anchors; never eval arbitrary strings."""
    if not isinstance(a, str):
        return a
    if a in names:
        return names[a]
    with contextlib.suppress(ValueError, SyntaxError):
        return ast.literal_eval(a)
    return a


def _layer_args(m: type, f, n: int, args: list, ch: list[int], gw: float, no: int) -> tuple[list, int, int]:
    """Resolve a layer's constructor args and output channels from the width multiple."""
    if m in CHANNEL_MODULES:
        c1, c2 = ch[f], args[0]
        if c2 != no:
            c2 = make_divisible(min(c2, float("inf")) * gw, 8)
        args = [c1, c2, *args[1:]]
        if m is C3:
            args.insert(2, n)
            n = 1
    elif m is nn.BatchNorm2d:
        args, c2 = [ch[f]], ch[f]
    elif m is Concat:
        c2 = sum(ch[x] for x in f)
    elif m is Detect:
        args.append([ch[x] for x in f])
        if isinstance(args[1], int):  # anchors given as a count per level
            args[1] = [list(range(args[1] * 2))] * len(f)
        c2 = ch[f if isinstance(f, int) else f[0]]
    else:
        c2 = ch[f]
    return args, c2, n


def _rows(d: dict, ch: list[int]) -> Iterator[tuple[int, object, int, type, str, list, int]]:
    """Each yaml layer resolved as parse_model builds it: (i, from, repeats, module, name, args, out channels)."""
    anchors, nc, gd, gw = d["anchors"], d["nc"], d["depth_multiple"], d["width_multiple"]
    na = (len(anchors[0]) // 2) if isinstance(anchors, list) else anchors
    no = na * (nc + 5)
    for i, (f, n, m_name, args) in enumerate(d["backbone"] + d["head"]):
        if m_name not in MODULES:
            raise ValueError(f"model yaml layer {i}: unknown module '{m_name}' (known: {', '.join(sorted(MODULES))})")
        m = MODULES[m_name]
        args = [_literal(a, {"nc": nc, "anchors": anchors}) for a in args]
        n = max(round(n * gd), 1) if n > 1 else n
        args, c2, n = _layer_args(m, f, n, args, ch, gw, no)
        yield i, f, n, m, m_name, args, c2
        if i == 0:
            ch = []
        ch.append(c2)


def _conv_params(c1: int, c2: int, k: int | list = 1, g: int = 1) -> int:
    """Conv (conv + BatchNorm) parameters, without building it."""
    k = k if isinstance(k, int) else 1
    return c1 * c2 * k * k // max(int(g), 1) + 2 * c2


def _module_params(m: type, args: list) -> int:
    """Parameter count of one module from its constructor args (the formulas of models/common.py)."""
    if m is Conv:
        return _conv_params(args[0], args[1], *(args[2:3] or [1]), *(args[5:6] or [1]))
    if m is Focus:
        return _conv_params(args[0] * 4, args[1], *(args[2:3] or [1]))
    if m is Bottleneck:
        c_ = int(args[1] * (args[4] if len(args) > 4 else 0.5))
        return _conv_params(args[0], c_) + _conv_params(c_, args[1], 3)
    if m is C3:
        c1, c2, n = args[:3]
        c_ = int(c2 * (args[5] if len(args) > 5 else 0.5))
        return 2 * _conv_params(c1, c_) + _conv_params(2 * c_, c2) + n * _module_params(Bottleneck, [c_, c_, 1, 1, 1.0])
    if m in (SPPF, SPP):
        pools = 3 if m is SPPF else len(args[2] if len(args) > 2 else (5, 9, 13))
        return _conv_params(args[0], args[0] // 2) + _conv_params(args[0] // 2 * (pools + 1), args[1])
    if m is Detect:
        na, no = len(args[1][0]) // 2, args[0] + 5
        return sum(c * no * na + no * na for c in args[2])
    if m is nn.BatchNorm2d:
        return 2 * args[0]
    return 0


def check_model_size(d: dict, ch: int = 3, limit: int = MAX_PARAMETERS) -> int:
    """Parameters a model yaml implies, counted from its rows: an absurd yaml is refused before it eats the memory."""
    total, worst = 0, (0, "")
    try:
        for i, _, n, m, m_name, args, c2 in _rows(deepcopy(d), [ch]):
            p, repeats = n * _module_params(m, args), args[2] if m is C3 else n
            total += p
            worst = max(worst, (p, f"layer {i} {m_name} with {c2} output channels x{repeats}"))
    except (OverflowError, MemoryError, IndexError, TypeError) as e:
        raise ValueError(f"model yaml: unusable layer sizes ({type(e).__name__}: {e}); check width_multiple "
                         f"{d.get('width_multiple')}, depth_multiple {d.get('depth_multiple')} and channel counts"
                         ) from None
    if total > limit:
        raise ValueError(f"model yaml: about {total / 1e6:,.0f}M parameters, over the {limit / 1e6:.0f}M limit "
                         f"(width_multiple {d.get('width_multiple')}, depth_multiple {d.get('depth_multiple')}; "
                         f"largest: {worst[1]}, {worst[0] / 1e6:,.0f}M); use yolov5[nsmlx].yaml sizes")
    return total


def parse_model(d: dict, ch: list[int]) -> tuple[nn.Sequential, list[int]]:
    """Build the layer list from a yaml dict; records i/f/type/np on each layer for routing and summaries."""
    check_model_size(d, ch[-1])
    layers, save = [], []
    for i, f, n, m, m_name, args, _ in _rows(d, ch):
        m_ = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
        m_.i, m_.f, m_.type = i, f, m_name.replace("__main__.", "")
        m_.np = sum(x.numel() for x in m_.parameters())
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(m_)
    return nn.Sequential(*layers), sorted(save)


def load_yaml_cfg(cfg: str | Path | dict) -> dict:
    """Model yaml by dict, path, or bare name found in models/ (yolov5s.yaml)."""
    if isinstance(cfg, dict):
        return deepcopy(cfg)
    path = Path(cfg)
    if not path.exists() and (ROOT / "models" / path.name).exists():
        path = ROOT / "models" / path.name
    if not path.exists():
        raise FileNotFoundError(f"model config '{cfg}' not found; pass a yaml path or one of models/yolov5[nsmlx].yaml")
    with open(path, errors="ignore") as f:
        return yaml.safe_load(f)


class DetectionModel(nn.Module):
    """YOLOv5 detector; layer names (model.N...) match official checkpoints and SparseML recipes."""

    def __init__(self, cfg: str | Path | dict = "yolov5s.yaml", ch: int = 3, nc: int | None = None, anchors=None):
        super().__init__()
        self.yaml = load_yaml_cfg(cfg)
        ch = self.yaml["ch"] = self.yaml.get("ch", ch)
        if nc and nc != self.yaml["nc"]:
            self.yaml["nc"] = nc
        if anchors:
            self.yaml["anchors"] = round(anchors) if isinstance(anchors, float) else anchors
        self.model, self.save = parse_model(deepcopy(self.yaml), ch=[ch])
        self.names = [str(i) for i in range(self.yaml["nc"])]
        self.inplace = self.yaml.get("inplace", True)
        self._init_detect(ch)
        initialize_weights(self)

    @property
    def nc(self) -> int:
        return self.model[-1].nc

    def _init_detect(self, ch: int) -> None:
        """Find strides by a dummy forward, express anchors in grid units, and prime the output biases."""
        m = self.model[-1]
        s = 256
        m.inplace = self.inplace
        self.train()
        with torch.no_grad():
            feats = self.forward(torch.zeros(1, ch, s, s))
        m.stride = torch.tensor([s / x.shape[-2] for x in feats])
        m.anchors /= m.stride.view(-1, 1, 1)
        check_anchor_order(m)
        self.stride = m.stride
        self._initialize_biases()

    def forward(self, x: torch.Tensor):
        y = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    def _initialize_biases(self) -> None:
        """Objectness prior ~8 objects per 640 image, class prior 0.6/nc: training starts stable."""
        m = self.model[-1]
        for mi, s in zip(m.m, m.stride):
            b = mi.bias.view(m.na, -1)
            b.data[:, 4] += math.log(8 / (640 / s) ** 2)
            b.data[:, 5 : 5 + m.nc] += math.log(0.6 / (m.nc - 0.99))
            mi.bias = torch.nn.Parameter(b.view(-1), requires_grad=True)

    def fuse(self) -> "DetectionModel":
        """Fold every BatchNorm into its conv for faster inference and export."""
        for m in self.modules():  # QAT-wrapped convs keep their BN: sparseml folds it at INT8 export
            if isinstance(m, Conv) and hasattr(m, "bn") and type(m.conv) is nn.Conv2d and type(m.bn) is nn.BatchNorm2d:
                m.conv = fuse_conv_and_bn(m.conv, m.bn)
                delattr(m, "bn")
                m.forward = m.forward_fuse
        return self

    def info(self, verbose: bool = False, imgsz: int = 640) -> dict:
        return model_info(self, verbose=verbose, imgsz=imgsz)


Model = DetectionModel  # Ultralytics alias


def check_anchor_order(m: Detect) -> bool:
    """Put the smallest anchors on the finest stride (P3), judged in pixels (anchors are in grid units); True if it
    had to flip them (a yaml or a k-means fit listed them backwards)."""
    stride = torch.as_tensor(m.stride).to(device=m.anchors.device, dtype=m.anchors.dtype).view(-1, 1, 1)
    pixels = m.anchors * stride
    area = pixels.prod(-1).mean(-1).view(-1)
    da, ds = area[-1] - area[0], stride.view(-1)[-1] - stride.view(-1)[0]
    if da and (da.sign() != ds.sign()):
        m.anchors[:] = (pixels.flip(0) / stride).view_as(m.anchors)
        return True
    return False


def initialize_weights(model: nn.Module) -> None:
    """YOLOv5 BN settings (eps 1e-3, momentum 0.03) and in-place activations."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = 1e-3, 0.03
        elif isinstance(m, (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU)):
            m.inplace = True


def parse_opt() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Print a YOLOv5 model summary")
    parser.add_argument("--cfg", type=str, default="yolov5s.yaml", help="model.yaml")
    parser.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="image size for GFLOPs")
    parser.add_argument("--nc", type=int, default=None, help="override number of classes")
    parser.add_argument("--fuse", action="store_true", help="fold BatchNorm into convs first (as deployed)")
    parser.add_argument("--verbose", action="store_true", help="print every layer")
    return parser.parse_args()


def main(opt: argparse.Namespace) -> None:
    model = DetectionModel(opt.cfg, nc=opt.nc).eval()
    if opt.fuse:
        model.fuse()
    model.info(verbose=True, imgsz=opt.imgsz)


if __name__ == "__main__":
    main(parse_opt())
