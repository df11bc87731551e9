"""Calibration images for one-shot pruning: unlabeled pictures from a dataset yaml, letterboxed to a square batch."""
from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.augmentations import letterbox


def calibration_files(data: dict | str | Path, split: str = "train") -> list[str]:
    """Image paths of a dataset split (labels are never read); falls back to 'val' when the yaml has no train split."""
    from utils.data_config import check_dataset
    from utils.dataloaders import list_image_files

    data_dict = data if isinstance(data, dict) else check_dataset(str(data))
    if split not in data_dict:
        split = "val" if "val" in data_dict else split
    if split not in data_dict:
        raise ValueError(f"dataset yaml has neither '{split}' nor 'val' images for calibration; add 'train:' to it")
    return list_image_files(data_dict[split], prefix=f"calibration ({split}): ")


def _read_letterboxed(path: str, imgsz: int, stride: int) -> np.ndarray:
    """One image as CHW RGB uint8 at imgsz x imgsz (square, so every calibration batch stacks)."""
    im = cv2.imread(path)
    if im is None:
        raise ValueError(f"calibration image {path} could not be read; remove it from the dataset or fix the file")
    im = letterbox(im, imgsz, auto=False, stride=stride)[0]
    return np.ascontiguousarray(im[:, :, ::-1].transpose(2, 0, 1))


def calibration_batches(files: list[str], imgsz: int = 640, batch_size: int = 8, n_images: int = 128,
                        stride: int = 32, seed: int = 0) -> list[torch.Tensor]:
    """uint8 (B,3,imgsz,imgsz) batches of `n_images` files (a seeded sample when the split is larger).

    uint8 keeps 128 images at 640 in ~150 MB; bn_recalibrate and obc_prune scale them to 0-1 floats themselves.
    """
    if not files:
        raise ValueError("no calibration images; point the dataset yaml's train split at a folder of images")
    chosen = sorted(random.Random(seed).sample(files, n_images)) if len(files) > n_images else list(files)
    batches = []
    for i in range(0, len(chosen), batch_size):
        ims = [_read_letterboxed(f, imgsz, stride) for f in chosen[i : i + batch_size]]
        batches.append(torch.from_numpy(np.stack(ims)))
    return batches


def as_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> 0-1 floats as the model was trained on; float input passes through."""
    return batch.float() / 255 if batch.dtype == torch.uint8 else batch.float()
