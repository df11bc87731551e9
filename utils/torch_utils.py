"""Small PyTorch helpers: BN folding, parameter/FLOP counting, device selection."""
from __future__ import annotations

import os

import torch
import torch.nn as nn



def is_parallel(model: nn.Module) -> bool:
    return isinstance(model, (nn.parallel.DataParallel, nn.parallel.DistributedDataParallel))


def de_parallel(model: nn.Module) -> nn.Module:
    """The bare model under a DP/DDP wrapper: attributes (hyp, stride, yaml) and state_dict keys live there."""
    return model.module if is_parallel(model) else model


@torch.no_grad()
def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Fold BN into the conv's weight and bias: same outputs in eval, one op fewer, and zeros in w stay zeros."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True).requires_grad_(False).to(conv.weight.device)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    b_conv = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_(bn.bias + (b_conv - bn.running_mean) * scale)
    return fused


def count_macs(model: nn.Module, imgsz: int | tuple[int, int] = 640) -> float:
    """Multiply-accumulates of one forward at imgsz, counted on a stride-sized input and scaled (convs are linear in area)."""
    stride = max(int(model.stride.max()), 32) if hasattr(model, "stride") else 32
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    total = [0.0]

    def hook(m: nn.Module, inp, out) -> None:
        if isinstance(m, nn.Conv2d):
            k = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            total[0] += out.numel() * (k + (m.bias is not None))
        elif isinstance(m, nn.Linear):
            total[0] += out.numel() * (m.in_features + (m.bias is not None))
        elif isinstance(m, (nn.Upsample, nn.BatchNorm2d)):
            total[0] += out.numel() * (2 if isinstance(m, nn.BatchNorm2d) else 1)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    try:
        p = next(model.parameters())
        ch = getattr(model, "yaml", {}).get("ch", 3)
        with torch.no_grad():
            model.eval()(torch.zeros(1, ch, stride, stride, device=p.device, dtype=p.dtype))
    finally:
        for hd in handles:
            hd.remove()
        model.train(was_training)
    return total[0] * (h / stride) * (w / stride)


def model_info(model: nn.Module, verbose: bool = False, imgsz: int | tuple[int, int] = 640) -> dict:
    """Layers, parameters, gradients and GFLOPs (2 x MACs, as the official YOLOv5 table counts)."""
    n_p = sum(x.numel() for x in model.parameters())
    n_g = sum(x.numel() for x in model.parameters() if x.requires_grad)
    layers = len(list(model.modules()))
    gflops = 2 * count_macs(model, imgsz) / 1e9
    if verbose:
        print(f"{'':>3}{'from':>18}{'n':>3}{'params':>10}  {'module':<40}")
        for m in getattr(model, "model", []):
            n = len(m) if isinstance(m, nn.Sequential) else 1
            print(f"{m.i:>3}{str(m.f):>18}{n:>3}{m.np:10.0f}  {m.type:<40}")
        name = getattr(model, "yaml_file", None) or "YOLOv5"
        print(f"{name} summary: {layers} layers, {n_p} parameters, {n_g} gradients, {gflops:.1f} GFLOPs at {imgsz}")
    return {"layers": layers, "parameters": n_p, "gradients": n_g, "gflops": gflops}


def select_device(device: str | torch.device = "") -> torch.device:
    """'' picks CUDA when present else CPU; 'cpu' or '0'/'0,1' as Ultralytics accepts."""
    if isinstance(device, torch.device):
        return device
    device = str(device).strip().lower().replace("cuda:", "")
    if device == "cpu" or (device == "" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if device and not torch.cuda.is_available():
        raise ValueError(f"--device {device} requested but CUDA is not available; use --device cpu")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", device or "0")
    return torch.device("cuda:0")
