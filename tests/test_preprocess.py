"""Pre-processing: the one-pass OpenCV blob equals the numpy reference on real photos and refuses mixed input."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from utils.augmentations import letterbox, letterbox_chw, to_blob
from utils.predict import Letterboxer


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


@pytest.mark.parametrize("name", ["bus.jpg", "zidane.jpg"])
@pytest.mark.parametrize("shape", [(640, 640), (320, 320), (480, 640), (1080, 810)])
def test_letterbox_chw_equals_letterbox_and_blob(assets, name, shape) -> None:
    """Issue 21: one resize and one pass per channel straight into the blob give exactly letterbox + to_blob."""
    im0 = cv2.imread(str(assets / "images" / name))
    ref, ratio, pad = letterbox(im0, shape, auto=False)
    out = np.full((3, *shape), np.nan, np.float32)
    assert letterbox_chw(im0, out) == (ratio, pad)
    assert np.array_equal(out[None], to_blob([ref]))  # bit-identical floats, border included
    u8 = np.zeros((3, *shape), np.uint8)
    letterbox_chw(im0, u8, resized=np.empty((1, 1, 3), np.uint8))  # a buffer of the wrong shape is not used
    assert np.array_equal(u8, ref[:, :, ::-1].transpose(2, 0, 1))


def test_letterboxer_matches_auto_letterbox_and_refuses_a_wrong_size(bus_jpg) -> None:
    """Predictor's pre-processing (auto padding for dynamic engines included) equals letterbox + to_blob, call after
    call (the resize buffer is reused), in a fresh batch array each time; a wrong output size is refused."""
    im0, lb = cv2.imread(str(bus_jpg)), Letterboxer()
    for auto in (True, False):
        ref, ratio, pad = letterbox(im0, 640, auto=auto, stride=32)
        for _ in range(2):
            x, meta = lb([im0, im0], (640, 640), auto and False, 32) if not auto else lb([im0], (640, 640), True, 32)
            assert np.array_equal(x, to_blob([ref] * len(x)))
            assert meta[0] == (ref.shape[:2], im0.shape[:2], (ratio, pad))
        u8, _ = lb([im0], (640, 640), auto, 32, np.uint8)
        assert u8.dtype == np.uint8 and np.array_equal(u8, ref[:, :, ::-1].transpose(2, 0, 1)[None])
    assert lb([im0], (640, 640), False, 32)[0] is not lb([im0], (640, 640), False, 32)[0]
    with pytest.raises(ValueError, match="letterbox_shape"):
        letterbox_chw(im0, np.zeros((3, 640, 608), np.uint8), 640, auto=True)
