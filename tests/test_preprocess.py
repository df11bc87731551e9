"""Pre-processing: the one-pass OpenCV blob equals the numpy reference on real photos and refuses mixed input."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from utils.augmentations import letterbox, to_blob


def test_to_blob_matches_numpy_reference(bus_jpg, coco128_dir) -> None:
    """OpenCV's one-pass blob equals flip BGR->RGB, HWC->CHW, /255 in float32 for real letterboxed photos."""
    ims = [letterbox(cv2.imread(str(p)), 320, auto=False)[0]
           for p in [bus_jpg, sorted((coco128_dir / "images" / "train2017").glob("*.jpg"))[0]]]
    ref = np.stack([im[:, :, ::-1].transpose(2, 0, 1) for im in ims]).astype(np.float32) / 255.0
    blob = to_blob(ims)
    assert blob.dtype == np.float32 and blob.shape == (2, 3, 320, 320) and blob.flags.c_contiguous
    np.testing.assert_allclose(blob, ref, rtol=0, atol=1e-7)


def test_to_blob_single_image_and_bad_input(bus_jpg) -> None:
    im = letterbox(cv2.imread(str(bus_jpg)), 96, auto=False)[0]
    assert to_blob([im]).shape == (1, 3, 96, 96)
    for bad in ([], [im, im[:64]], [im[:, :, 0]], [np.dstack([im, im[:, :, :1]])]):
        with pytest.raises(ValueError, match="one shape"):
            to_blob(bad)
