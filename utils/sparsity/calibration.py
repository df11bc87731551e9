"""Calibration images for one-shot pruning: unlabeled pictures from a dataset yaml, letterboxed to a square batch."""
from __future__ import annotations

import math
import random
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.augmentations import letterbox
from utils.data_config import check_dataset
from utils.dataloaders import list_image_files


def calibration_files(data: dict | str | Path, split: str = "train") -> list[str]:
    """Image paths of a dataset split (labels are never read); falls back to 'val' when the yaml has no train split."""

    data_dict = data if isinstance(data, dict) else check_dataset(str(data))
    if split not in data_dict:
        split = "val" if "val" in data_dict else split
    if split not in data_dict:
        raise ValueError(f"dataset yaml has neither '{split}' nor 'val' images for calibration; add 'train:' to it")
    return list_image_files(data_dict[split], prefix=f"calibration ({split}): ")


def _read(path: str) -> np.ndarray:
    """One image, HWC BGR."""
    im = cv2.imread(path)
    if im is None:
        raise ValueError(f"calibration image {path} could not be read; remove it from the dataset or fix the file")
    return im


def _resized(im: np.ndarray, imgsz: int) -> np.ndarray:
    """Long side at imgsz, resampled like val.py's loader (INTER_AREA when shrinking)."""
    h, w = im.shape[:2]
    r = imgsz / max(h, w)
    if r == 1:
        return im
    interp = cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR
    return cv2.resize(im, (math.ceil(w * r), math.ceil(h * r)), interpolation=interp)


def _chw(im: np.ndarray, shape: tuple[int, int], stride: int, scaleup: bool = False) -> np.ndarray:
    """Letterboxed into `shape` (h, w), as CHW RGB uint8."""
    im = letterbox(im, shape, auto=False, scaleup=scaleup, stride=stride)[0]
    return np.ascontiguousarray(im[:, :, ::-1].transpose(2, 0, 1))


def rect_shape(aspects: list[float], imgsz: int, stride: int, pad: float = 0.5) -> tuple[int, int]:
    """The (h, w) val.py's rectangular batches use for images with these h/w ratios (pad 0.5 like its loader)."""
    lo, hi = min(aspects), max(aspects)
    shape = [hi, 1.0] if hi < 1 else [1.0, 1 / lo] if lo > 1 else [1.0, 1.0]
    return tuple(int(math.ceil(x * imgsz / stride + pad) * stride) for x in shape)


def calibration_batches(files: list[str], imgsz: int = 640, batch_size: int = 8, n_images: int = 128,
                        stride: int = 32, seed: int = 0, rect: bool = False) -> list[torch.Tensor]:
    """uint8 (B,3,H,W) batches of `n_images` files (a seeded sample when the split is larger).

    rect: images sorted by aspect ratio and letterboxed to val.py's rectangular batch shapes (the padding val sees);
    False: imgsz x imgsz squares, a 4:3 photo then a quarter grey.
    uint8 keeps 128 images at 640 in ~150 MB; bn_recalibrate and obc_prune scale them to 0-1 floats themselves.
    """
    if not files:
        raise ValueError("no calibration images; point the dataset yaml's train split at a folder of images")
    chosen = sorted(random.Random(seed).sample(files, n_images)) if len(files) > n_images else list(files)
    if not rect:  # letterbox straight from the original, one square shape for every batch
        ims = [_chw(_read(f), (imgsz, imgsz), stride, scaleup=True) for f in chosen]
        return [torch.from_numpy(np.stack(ims[i : i + batch_size])) for i in range(0, len(ims), batch_size)]
    ims = sorted((_resized(_read(f), imgsz) for f in chosen), key=lambda im: im.shape[0] / im.shape[1])
    batches = []
    for i in range(0, len(ims), batch_size):
        group = ims[i : i + batch_size]
        shape = rect_shape([im.shape[0] / im.shape[1] for im in group], imgsz, stride)
        batches.append(torch.from_numpy(np.stack([_chw(im, shape, stride) for im in group])))
    return batches


def as_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> 0-1 floats as the model was trained on; float input passes through."""
    return batch.float() / 255 if batch.dtype == torch.uint8 else batch.float()
