"""YOLO label checking and the label cache: decides which image/label pairs a dataset may use, and says why not.

Policy (Ultralytics v7.0 parity where it decides which images val sees, so mAP matches):
- a bad image (zero bytes, not an image, undecodable, < 10 px) or any bad label row drops the whole pair,
  counted as corrupt, with one warning naming the file and the problem;
- coordinates must lie in [0, 1] exactly (checked in float32 as Ultralytics does; no tolerance), box edges
  cx +- w/2 are not checked (Ultralytics keeps such boxes and the loader clips them);
- w or h <= 0 is rejected (stricter than Ultralytics, which keeps zero-size boxes that can never be matched);
- class ids must be integers in [0, nc); duplicate rows are removed with a warning and the image kept;
- rows of 7+ columns (odd count) are polygons 'class x1 y1 x2 y2 ...' and become their bounding box;
- a JPEG missing its end marker is re-encoded in place (as Ultralytics does) when the folder is writable.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

IMG_FORMATS = ("bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm")
CACHE_VERSION = 1
NUM_THREADS = min(8, os.cpu_count() or 1)
LOGGER = logging.getLogger(__name__)
EXIF_ORIENTATION = 274  # orientations 5..8 rotate by 90 degrees, swapping h and w


class LabelError(ValueError):
    """A label file row that cannot be used; the message says which row and why."""


@dataclass
class LabelCheck:
    """Outcome for one image/label pair: labels (n,5) float32 [cls, cx, cy, w, h] and (h, w), or None if dropped."""

    im_file: str
    labels: np.ndarray | None
    shape: tuple[int, int] | None
    missing: int = 0
    found: int = 0
    empty: int = 0
    corrupt: int = 0
    msg: str = ""


def verify_image_label(im_file: str, lb_file: str, nc: int | None = None, prefix: str = "") -> LabelCheck:
    """Check one image and its label file; never raises, problems become counts and a warning message."""
    try:
        shape, msg = check_image(im_file, prefix)
    except Exception as e:  # any failure to read the image: skip it, keep scanning
        return LabelCheck(im_file, None, None, corrupt=1, msg=f"{prefix}WARNING ⚠️ {im_file}: ignoring image: {e}")
    if not os.path.isfile(lb_file):
        return LabelCheck(im_file, np.zeros((0, 5), np.float32), shape, missing=1, msg=msg)
    try:
        labels, n_dup = parse_label_file(lb_file, nc)
    except (LabelError, OSError, UnicodeDecodeError) as e:
        text = f"{prefix}WARNING ⚠️ {lb_file}: ignoring image and labels: {e}"
        return LabelCheck(im_file, None, None, found=1, corrupt=1, msg=text)
    if n_dup:
        msg = f"{prefix}WARNING ⚠️ {lb_file}: {n_dup} duplicate label row(s) removed"
    return LabelCheck(im_file, labels, shape, found=1, empty=int(len(labels) == 0), msg=msg)


def check_image(im_file: str, prefix: str = "") -> tuple[tuple[int, int], str]:
    """Return (h, w) after EXIF rotation and a warning if a truncated JPEG was restored; raise if unusable."""
    if os.path.getsize(im_file) == 0:
        raise ValueError("empty file (0 bytes)")
    try:
        with Image.open(im_file) as im:
            im.verify()  # cheap structural check (PNG CRCs, headers); must come first on a fresh handle
        with Image.open(im_file) as im:
            orientation = im.getexif().get(EXIF_ORIENTATION, 1)
            w, h = im.size
            fmt = (im.format or "").lower()
    except UnidentifiedImageError:
        raise ValueError("not an image file (unrecognised format)") from None
    except Exception as e:
        raise ValueError(f"corrupt image ({e})") from None
    if orientation in (5, 6, 7, 8):
        h, w = w, h
    if h < 10 or w < 10:
        raise ValueError(f"image size {w}x{h} is under 10 pixels")
    if fmt not in IMG_FORMATS:
        raise ValueError(f"unsupported image format {fmt or 'unknown'}")
    msg = ""
    if fmt in ("jpeg", "jpg", "mpo") and not _has_jpeg_end(im_file):
        (h, w), msg = _restore_jpeg(im_file, prefix)
    return (h, w), msg


def _has_jpeg_end(path: str) -> bool:
    """A complete JPEG ends with the EOI marker FFD9; without it the file was cut short."""
    with open(path, "rb") as f:
        f.seek(-2, os.SEEK_END)
        return f.read() == b"\xff\xd9"


def _restore_jpeg(path: str, prefix: str) -> tuple[tuple[int, int], str]:
    """Decode what is there and re-encode it losslessly-ish in place, so later reads stop warning."""
    im = cv2.imread(path)  # libjpeg fills the missing tail; applies EXIF rotation like the loader does
    if im is None:
        raise ValueError("corrupt JPEG (truncated and undecodable)")
    h, w = im.shape[:2]
    if not is_writable_dir(Path(path).parent):
        return (h, w), f"{prefix}WARNING ⚠️ {path}: truncated JPEG kept as is (folder is read-only)"
    params = [cv2.IMWRITE_JPEG_QUALITY, 100, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, buf = cv2.imencode(".jpg", im, params)
    if not ok:
        raise ValueError("corrupt JPEG (truncated and could not be re-encoded)")
    Path(path).write_bytes(buf.tobytes())
    return (h, w), f"{prefix}WARNING ⚠️ {path}: truncated JPEG restored and saved"


def is_writable_dir(path: Path) -> bool:
    """Writable by us AND not marked read-only: running as root must not write into read-only shared datasets."""
    try:
        return os.access(path, os.W_OK) and bool(path.stat().st_mode & stat.S_IWUSR)
    except OSError:
        return False


def parse_label_file(lb_file: str, nc: int | None = None) -> tuple[np.ndarray, int]:
    """Parse and validate a YOLO label file; returns (labels (n,5) float32 in file order, duplicates removed)."""
    text = Path(lb_file).read_text(encoding="utf-8-sig")
    rows = [(i + 1, line.split()) for i, line in enumerate(text.splitlines()) if line.strip()]
    if not rows:
        return np.zeros((0, 5), np.float32), 0
    with np.errstate(over="ignore"):  # 1e39 becomes inf in float32; _check_row reports it
        labels = np.array([_parse_row(n, tokens) for n, tokens in rows], dtype=np.float32)
    for (n, _), row in zip(rows, labels):
        _check_row(n, row, nc)
    _, first = np.unique(labels, axis=0, return_index=True)
    n_dup = len(labels) - len(first)
    if n_dup:
        labels = labels[np.sort(first)]  # keep first occurrences in file order
    return labels, n_dup


def _parse_row(n: int, tokens: list[str]) -> list[float]:
    """One row to [cls, cx, cy, w, h]; polygons become their bounding box."""
    k = len(tokens)
    if k != 5 and (k < 7 or k % 2 == 0):
        raise LabelError(f"row {n} has {k} columns, expected 5 (class cx cy w h)")
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        bad = next(t for t in tokens if not _is_float(t))
        raise LabelError(f"row {n} has a non-numeric value {bad!r}") from None
    if not np.isfinite(values).all():
        raise LabelError(f"row {n} has a NaN or infinite value")
    if k == 5:
        return values
    xs, ys = values[1::2], values[2::2]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    return [values[0], (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]


def _is_float(token: str) -> bool:
    """True when float() accepts the token."""
    try:
        float(token)
        return True
    except ValueError:
        return False


def _check_row(n: int, row: np.ndarray, nc: int | None) -> None:
    """Range checks on the float32 values (float32 like Ultralytics, so the same rows pass)."""
    if not np.isfinite(row).all():
        raise LabelError(f"row {n} has a value too large for float32")
    cls = float(row[0])
    if cls < 0 or cls != int(cls):
        raise LabelError(f"row {n} has invalid class id {cls:g} (must be an integer >= 0)")
    if nc is not None and cls >= nc:
        raise LabelError(f"row {n} has class id {int(cls)} but nc={nc} (valid ids are 0..{nc - 1})")
    xywh = row[1:]
    if (xywh[2:] <= 0).any():
        raise LabelError(f"row {n} has non-positive width/height: {xywh[2]:g} {xywh[3]:g}")
    if (xywh < 0).any() or (xywh > 1).any():
        raise LabelError(f"row {n} has coordinates outside [0, 1]: {' '.join(f'{v:g}' for v in xywh)} "
                         f"(labels must be normalized by image width/height)")


@dataclass
class LabelScan:
    """Everything the loader needs from a scan: usable pairs in order, counts and warnings."""

    im_files: list[str]
    labels: list[np.ndarray]
    shapes: list[tuple[int, int]]
    found: int = 0
    missing: int = 0
    empty: int = 0
    corrupt: int = 0
    orphans: int = 0
    msgs: list[str] = field(default_factory=list)
    from_cache: bool = False

    def summary(self, prefix: str = "") -> str:
        """Ultralytics-style count line: labelled images, backgrounds, corrupt, label files without an image."""
        return (f"{prefix}{self.found} images, {self.missing + self.empty} backgrounds, "
                f"{self.corrupt} corrupt, {self.orphans} orphan labels")


def scan_labels(im_files: list[str], label_files: list[str], nc: int | None = None, prefix: str = "") -> LabelScan:
    """Verify every pair (threaded: PIL and file IO release the GIL) and collect usable ones in input order."""
    scan = LabelScan([], [], [])
    with ThreadPoolExecutor(NUM_THREADS) as pool:
        results = pool.map(lambda a: verify_image_label(*a, nc, prefix), zip(im_files, label_files))
        for r in results:
            scan.found += r.found
            scan.missing += r.missing
            scan.empty += r.empty
            scan.corrupt += r.corrupt
            if r.msg:
                scan.msgs.append(r.msg)
            if r.labels is not None:
                scan.im_files.append(r.im_file)
                scan.labels.append(r.labels)
                scan.shapes.append(r.shape)
    scan.orphans = count_orphans(label_files)
    return scan


def count_orphans(label_files: list[str]) -> int:
    """Label files in the label folders that no image points to (often a sign of a renamed/missing image)."""
    expected = set(label_files)
    found = 0
    for folder in {os.path.dirname(f) for f in label_files}:
        if os.path.isdir(folder):
            with os.scandir(folder) as it:
                found += sum(1 for e in it if e.name.endswith(".txt") and e.path not in expected)
    return found


def cache_hash(im_files: list[str], label_files: list[str], nc: int | None) -> str:
    """Invalidation key: every path with its size and mtime_ns (-1 when absent), plus nc and the cache version.

    The mtime matters: a label edited in place to the same size (a class id 1 -> 2) must be re-read.
    """
    h = hashlib.sha256(f"v{CACHE_VERSION} nc={nc}\n".encode())
    for f in (*im_files, *label_files):
        try:
            st = os.stat(f)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size = mtime = -1
        h.update(f"{f}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


def load_or_scan(im_files: list[str], label_files: list[str], cache_path: Path, nc: int | None = None,
                 prefix: str = "") -> LabelScan:
    """Use the cache when its hash matches; else scan and try to write a fresh cache."""
    key = cache_hash(im_files, label_files, nc)
    scan = read_cache(cache_path, key)
    if scan is not None:
        scan.orphans = count_orphans(label_files)  # cheap, and not covered by the hash
        return scan
    scan = scan_labels(im_files, label_files, nc, prefix)
    # re-hash: restoring truncated JPEGs changes file sizes, and the cache must match the files as left
    write_cache(cache_path, cache_hash(im_files, label_files, nc), scan, prefix)
    return scan


def read_cache(path: Path, key: str) -> LabelScan | None:
    """Load a JSON cache (no pickle: safe to read); None when absent, unreadable or stale."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("version") != CACHE_VERSION or data.get("hash") != key:
            return None
        c = data["counts"]
        items = data["items"]
        return LabelScan(
            im_files=[it[0] for it in items],
            shapes=[(int(it[1][0]), int(it[1][1])) for it in items],
            labels=[np.array(it[2], dtype=np.float32).reshape(-1, 5) for it in items],
            found=c["found"], missing=c["missing"], empty=c["empty"], corrupt=c["corrupt"],
            msgs=list(data["msgs"]), from_cache=True)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def write_cache(path: Path, key: str, scan: LabelScan, prefix: str = "") -> bool:
    """Atomic JSON write beside the labels; a read-only folder only costs a warning and a rescan next time."""
    path = Path(path)
    if not path.parent.is_dir():  # e.g. no labels folder at all: nothing worth caching there
        return False
    if not is_writable_dir(path.parent):
        LOGGER.warning(f"{prefix}WARNING ⚠️ cache folder {path.parent} is not writeable; labels will be rescanned")
        return False
    data = {
        "version": CACHE_VERSION, "hash": key,
        "counts": {"found": scan.found, "missing": scan.missing, "empty": scan.empty, "corrupt": scan.corrupt},
        "msgs": scan.msgs,
        # float32 -> float64 -> JSON repr round-trips exactly back to the same float32
        "items": [[f, list(s), lb.tolist()] for f, s, lb in zip(scan.im_files, scan.shapes, scan.labels)],
    }
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, path)
        return True
    except OSError as e:
        tmp.unlink(missing_ok=True)
        LOGGER.warning(f"{prefix}WARNING ⚠️ could not write label cache {path}: {e}")
        return False
