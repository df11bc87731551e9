"""Image transforms: letterbox resizing used by inference, val and training."""
from __future__ import annotations

import math

import cv2
import numpy as np

from utils.logger import LOGGER


def letterbox_geometry(
    shape: tuple[int, int],
    new_shape: int | tuple[int, int] = 640,
    auto: bool = True,
    scale_fill: bool = False,
    scaleup: bool = True,
    stride: int = 32,
) -> tuple[tuple[int, int], tuple[float, float], tuple[float, float], tuple[int, int, int, int]]:
    """Where letterbox puts an image of `shape` (h, w): resized (w, h), (rw, rh), (dw, dh) per side, and the
    (top, bottom, left, right) border in pixels."""
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:  # val: never upscale, it hurts mAP on small images
        r = min(r, 1.0)
    ratio = (r, r)
    new_unpad = (int(round(shape[1] * r)), int(round(shape[0] * r)))
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    if auto:  # minimum rectangle: pad only up to the next stride multiple
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    elif scale_fill:  # stretch, no padding
        dw, dh = 0.0, 0.0
        new_unpad = (new_shape[1], new_shape[0])
        ratio = (new_shape[1] / shape[1], new_shape[0] / shape[0])
    dw, dh = dw / 2, dh / 2
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    return new_unpad, ratio, (dw, dh), (top, bottom, left, right)


def letterbox(
    im: np.ndarray,
    new_shape: int | tuple[int, int] = 640,
    color: tuple[int, int, int] = (114, 114, 114),
    auto: bool = True,
    scale_fill: bool = False,
    scaleup: bool = True,
    stride: int = 32,
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize keeping aspect ratio and pad to new_shape (h, w); returns image, (rw, rh), (dw, dh) per side."""
    new_unpad, ratio, pad, (top, bottom, left, right) = letterbox_geometry(im.shape[:2], new_shape, auto, scale_fill,
                                                                           scaleup, stride)
    if im.shape[1::-1] != new_unpad:
        im = cv2.resize(im, new_unpad, interpolation=cv2.INTER_LINEAR)
    im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return im, ratio, pad


def letterbox_shape(shape: tuple[int, int], new_shape: int | tuple[int, int] = 640, auto: bool = True,
                    scaleup: bool = True, stride: int = 32) -> tuple[int, int]:
    """(h, w) of the image letterbox returns for an input of `shape` (h, w): the output letterbox_chw fills."""
    (w, h), _, _, (top, bottom, left, right) = letterbox_geometry(shape, new_shape, auto, False, scaleup, stride)
    return h + top + bottom, w + left + right


def letterbox_chw(im: np.ndarray, out: np.ndarray, new_shape: int | tuple[int, int] | None = None,
                  auto: bool = False, scaleup: bool = True, stride: int = 32,
                  color: tuple[int, int, int] = (114, 114, 114),
                  resized: np.ndarray | None = None) -> tuple[tuple[float, float], tuple[float, float]]:
    """to_blob([letterbox(im, new_shape, auto=auto)[0]])[0] written straight into `out` (3, H, W): float32 in [0, 1]
    (bit-identical: float32(x) * float32(1/255), as OpenCV's blob computes it) or uint8 RGB when `out` is uint8.

    One resize (into `resized`, a reusable (h, w, 3) uint8 buffer, when its shape fits), then one pass per channel
    into the blob's inner rectangle and a fill of its border: no padded intermediate image, no copyMakeBorder, no
    second interleaved copy. Returns (rw, rh), (dw, dh) as letterbox does; new_shape defaults to out's (H, W).
    """
    h, w = out.shape[1:]
    new_unpad, ratio, pad, (top, bottom, left, right) = letterbox_geometry(
        im.shape[:2], (h, w) if new_shape is None else new_shape, auto, False, scaleup, stride)
    if (h, w) != (new_unpad[1] + top + bottom, new_unpad[0] + left + right):
        raise ValueError(f"letterbox_chw: output {h}x{w} is not the letterboxed size of a {im.shape[0]}x"
                         f"{im.shape[1]} image; allocate it with letterbox_shape()")
    if im.shape[1::-1] != new_unpad:
        if resized is None or resized.shape != (new_unpad[1], new_unpad[0], 3):
            resized = np.empty((new_unpad[1], new_unpad[0], 3), np.uint8)
        im = cv2.resize(im, new_unpad, dst=resized, interpolation=cv2.INTER_LINEAR)
    scale = np.float32(1 / 255.0)
    inner = [out[c, top:h - bottom, left:w - right] for c in (2, 1, 0)]  # BGR channel k -> RGB plane 2 - k
    if out.dtype == np.uint8:
        _split_into(im, inner)
    else:
        for k, plane in enumerate(cv2.split(im)):
            np.multiply(plane, scale, out=inner[k], casting="unsafe")
    for c in range(3):
        plane, value = out[c], color[2 - c]
        if out.dtype != np.uint8:
            value = np.float32(value) * scale
        for band in (plane[:top], plane[h - bottom:], plane[top:h - bottom, :left], plane[top:h - bottom, w - right:]):
            band[...] = value
    return ratio, pad


def _split_into(im: np.ndarray, planes: list[np.ndarray]) -> None:
    """im's channels written into the (strided) uint8 views `planes` by one cv2.split: 7x faster than a numpy copy per
    channel (bus.jpg at 640: 0.04 vs 0.30 ms). OpenCV fills arrays it is given when their shape fits; if a build
    ever hands back new ones instead, they are copied over."""
    got = cv2.split(im, planes)
    for dst, src in zip(planes, got):
        if src is not dst:
            np.copyto(dst, src)


def letterbox_hwc(im: np.ndarray, out: np.ndarray, new_shape: int | tuple[int, int] | None = None,
                  auto: bool = False, scaleup: bool = True, stride: int = 32,
                  color: tuple[int, int, int] = (114, 114, 114)) -> tuple[tuple[float, float], tuple[float, float]]:
    """letterbox(im, new_shape, auto=auto)[0] written into `out` (H, W, 3) uint8 BGR: the resize lands in the
    canvas' inner rectangle itself and only the border is filled, so each pixel is written once (the input of a
    graph exported with --nhwc). Returns (rw, rh), (dw, dh) as letterbox does."""
    h, w = out.shape[:2]
    new_unpad, ratio, pad, (top, bottom, left, right) = letterbox_geometry(
        im.shape[:2], (h, w) if new_shape is None else new_shape, auto, False, scaleup, stride)
    if (h, w) != (new_unpad[1] + top + bottom, new_unpad[0] + left + right):
        raise ValueError(f"letterbox_hwc: output {h}x{w} is not the letterboxed size of a {im.shape[0]}x"
                         f"{im.shape[1]} image; allocate it with letterbox_shape()")
    inner = out[top:h - bottom, left:w - right]
    if im.shape[1::-1] != new_unpad:
        cv2.resize(im, new_unpad, dst=inner, interpolation=cv2.INTER_LINEAR)
    else:
        inner[...] = im
    for band in (out[:top], out[h - bottom:], out[top:h - bottom, :left], out[top:h - bottom, w - right:]):
        band[...] = color
    return ratio, pad


def to_blob(images: list[np.ndarray]) -> np.ndarray:
    """Same-size BGR HWC uint8 images -> float32 NCHW RGB in [0, 1], in one pass (OpenCV's blob routine: 3-4x
    faster than flip/transpose/stack/astype/divide in numpy, which cost ~5 ms of a 640x640 image's pre-processing)."""
    if not images or any(im.ndim != 3 or im.shape[2] != 3 or im.shape != images[0].shape for im in images):
        shapes = sorted({tuple(im.shape) for im in images})
        raise ValueError(f"to_blob needs one or more BGR images of one shape (H, W, 3); got shapes {shapes}")
    return cv2.dnn.blobFromImages(images, scalefactor=1 / 255.0, swapRB=True)


def make_divisible(x: float, divisor: int) -> int:
    """Smallest multiple of divisor >= x (channel counts and image sizes must divide the stride)."""
    return int(math.ceil(x / divisor) * divisor)


def check_img_size(imgsz: int | list[int], s: int = 32, floor: int = 0) -> int | list[int]:
    """Round image size(s) up to a multiple of the model stride, warning like Ultralytics does."""
    sizes = [imgsz] if isinstance(imgsz, int) else list(imgsz)
    new = [max(make_divisible(x, int(s)), floor) for x in sizes]
    if new != sizes:
        LOGGER.warning(
            f"WARNING --img-size {imgsz} must be multiple of max stride {s}, updating to {new if len(new) > 1 else new[0]}")
    return new[0] if isinstance(imgsz, int) else new
