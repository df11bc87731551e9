"""PyTorch engine: the checkpoint (or an in-memory model) itself, the baseline every export is compared to."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .base import Engine
from .metadata import parse_names


class TorchEngine(Engine):
    """Eager PyTorch model in eval mode; accepts any input size that divides the stride."""

    name = "torch"

    def __init__(self, *args, fuse: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fuse = fuse

    def load(self, path: str | Path | nn.Module) -> "TorchEngine":
        """A checkpoint path (official Ultralytics or ours) or a model already in memory (val during training)."""
        if self.num_threads:
            torch.set_num_threads(int(self.num_threads))  # process-wide: torch has no per-model thread pool
        if isinstance(path, nn.Module):
            self.model, self.file = path, type(path).__name__
        else:
            from utils.checkpoint import load_model  # the lead's loader: safe unpickling of official .pt files

            self.model, self.file = load_model(str(path), device=self.device), str(path)
            if self.fuse and hasattr(self.model, "fuse"):
                with torch.no_grad():  # keep folded weights free of autograd history
                    self.model.requires_grad_(False).fuse()
        self.model.eval()
        self.names = parse_names(getattr(self.model, "names", None))
        stride = getattr(self.model, "stride", 32)
        self.stride = int(stride.max()) if isinstance(stride, torch.Tensor) else int(max(np.atleast_1d(stride)))
        self.input_name, self.input_shape = "images", ["batch", 3, "height", "width"]
        self.imgsz, self.fixed_batch, self.dynamic = None, None, True
        self.param_dtype = next(self.model.parameters()).dtype
        return self

    @torch.inference_mode()
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.device, self.param_dtype)
        y = self.model(x)
        if isinstance(y, (list, tuple)):  # eval forward gives (pred, raw_heads); Detect.export gives pred alone
            y = y[0]
        return y.float().cpu().numpy()

    @property
    def torch_module(self) -> nn.Module:
        return self.model

    def version(self) -> str:
        return torch.__version__

    def threads(self) -> int | None:
        return torch.get_num_threads()
