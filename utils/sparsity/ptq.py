"""Post-training INT8 in SparseML's form: QAT structure + observer calibration (utils/export/int8.py writes it as
ConvInteger ONNX, the form DeepSparse runs fastest; every other engine gets utils/export/qdq.py's QDQ file).
Quantization-aware training (a recipe's QuantizationModifier) recovers more accuracy.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable

import cv2
import numpy as np
import torch
from torch import nn

from utils.assets import assets_dir
from utils.augmentations import letterbox

from .manager import apply_recipe_structure

# Same scheme as recipes/*.pruned_quantized.yaml, so PTQ and QAT files have one INT8 layout (ConvInteger).
PTQ_RECIPE = """
modifiers:
  - !QuantizationModifier
    start_epoch: 0.0
    submodules: [model]
    custom_quantizable_module_types: ['SiLU']
    exclude_module_types: ['SiLU']
    quantize_conv_activations: False
"""


def calibration_batches(imgsz: tuple[int, int], images: Iterable[np.ndarray] | None = None,
                        batch_size: int = 4) -> list[torch.Tensor]:
    """Letterboxed float batches from BGR images (default: the shared sample images, else uniform noise)."""
    if images is None:
        images = _sample_images()
    tensors = [torch.from_numpy(letterbox(im, imgsz, auto=False)[0][:, :, ::-1].transpose(2, 0, 1).copy())
               for im in images]
    if not tensors:
        return [torch.rand(batch_size, 3, *imgsz)]
    stacked = torch.stack(tensors).float() / 255
    return list(stacked.split(batch_size))


def _sample_images() -> list[np.ndarray]:
    files = sorted((assets_dir() / "images").glob("*.jpg"))
    return [im for im in (cv2.imread(str(f)) for f in files) if im is not None]


def quantize_ptq(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """A QAT-structured copy whose observers saw `batches`; BN statistics are left untouched (eval forwards)."""
    q = copy.deepcopy(model).float()
    apply_recipe_structure(q, PTQ_RECIPE, epoch=0.0)  # leaves q in train mode (QAT fusion needs it)
    q.eval()  # observers still record in eval mode; BatchNorm no longer updates
    with torch.no_grad():
        for x in batches:
            q(x)
    for m in q.modules():
        if hasattr(m, "disable_observer"):
            m.disable_observer()
    return q
