"""Datasets and loaders: image + YOLO label batches for train/val, and image/video sources for detect."""
from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import psutil
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler, distributed

from utils.augment_train import augment_hsv, build_mosaic, mixup, random_flips, random_perspective, with_defaults
from utils.boxes import xywhn2xyxy, xyxy2xywhn
from utils.augmentations import letterbox
from utils.data_config import DatasetError
from utils.labels import IMG_FORMATS, LabelScan, is_writable_dir, load_or_scan

VID_FORMATS = ("asf", "avi", "gif", "m4v", "mkv", "mov", "mp4", "mpeg", "mpg", "ts", "wmv")
HELP = "see https://docs.ultralytics.com/yolov5/tutorials/train_custom_data"
RANK = int(os.getenv("RANK", -1))
NUM_THREADS = min(8, os.cpu_count() or 1)
# Without --cache, a process keeps the resized images it decodes when the whole set needs less than this:
# small (fine-tuning) datasets then decode each image once per worker instead of once per use.
LAZY_CACHE_BYTES = 128 * 2**20
LOGGER = logging.getLogger(__name__)


def img2label_paths(img_paths: list[str]) -> list[str]:
    """YOLO convention: .../images/x.jpg -> .../labels/x.txt (last '/images/' only)."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return [sb.join(p.rsplit(sa, 1)).rsplit(".", 1)[0] + ".txt" for p in img_paths]


def _suffix(path: str) -> str:
    """Lower-case extension without the dot."""
    return path.rsplit(".", 1)[-1].lower() if "." in os.path.basename(path) else ""


def walk_files(root: str | Path) -> tuple[list[str], int]:
    """Files under root, entering each real folder once: a link back into the tree (a loop) is skipped, not followed.

    Returns (files, number of directory links skipped because their target was already scanned).
    """
    files: list[str] = []
    seen, skipped = {os.path.realpath(root)}, 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for d in sorted(x for x in dirnames if not x.startswith(".")):  # hidden folders stay out, as with glob
            real = os.path.realpath(os.path.join(dirpath, d))
            if real in seen:
                skipped += 1
            else:
                seen.add(real)
                keep.append(d)
        dirnames[:] = keep
        files += [os.path.join(dirpath, f) for f in filenames if not f.startswith(".")]
    return files, skipped


def dedupe_real(files: list[str]) -> tuple[list[str], int]:
    """First path of each real file (sorted order kept): two links to one image must not count it twice."""
    seen: set[str] = set()
    out = [f for f in files if not (os.path.realpath(f) in seen or seen.add(os.path.realpath(f)))]
    return out, len(files) - len(out)


def list_image_files(path: str | Path | list, prefix: str = "") -> list[str]:
    """Images named by a folder (recursive), a .txt list (relative lines resolve against its folder) or a list."""
    files: list[str] = []
    links = 0
    for p in path if isinstance(path, (list, tuple)) else [path]:
        p = Path(p)
        if p.is_dir():
            found, skipped = walk_files(p)
            files, links = files + found, links + skipped
        elif p.is_file():
            lines = [x.strip() for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
            files += [x if os.path.isabs(x) else os.path.normpath(p.parent / x) for x in lines]
        else:
            raise DatasetError(f"{prefix}{p} does not exist; check the train/val paths in your dataset yaml")
    images, dups = dedupe_real(sorted(f.replace("/", os.sep) for f in files if _suffix(f) in IMG_FORMATS))
    if links or dups:
        LOGGER.warning(f"{prefix}WARNING ⚠️ skipped {links} directory links to folders already scanned (loops or "
                       f"repeats) and {dups} duplicate images (same real file) in {path}")
    if not images:
        raise DatasetError(f"{prefix}no images found in {path} (formats: {', '.join(IMG_FORMATS)}); {HELP}")
    return images


class LoadImagesAndLabels(Dataset):
    """YOLO dataset: val path is letterbox-only (Ultralytics-identical pixels); train path adds mosaic & co."""

    def __init__(self, path: str | Path | list, img_size: int = 640, batch_size: int = 16, augment: bool = False,
                 hyp: dict | None = None, rect: bool = False, stride: int = 32, pad: float = 0.0, prefix: str = "",
                 single_cls: bool = False, nc: int | None = None, cache_images: str | bool | None = None) -> None:
        self.img_size, self.augment, self.stride, self.path = img_size, augment, stride, path
        self.hyp = with_defaults(hyp) if augment else hyp
        self.rect = rect
        self.mosaic = augment and not rect  # rect batches need whole images, mosaic would break their shapes
        self.mosaic_border = (-img_size // 2, -img_size // 2)
        files = list_image_files(path, prefix)
        check_nc = None if single_cls else nc  # single_cls merges all ids into 0, so any id is fine
        scan = load_or_scan(files, img2label_paths(files), self._cache_path(path, files), check_nc, prefix)
        self._report(scan, prefix)
        self.im_files, self.labels = scan.im_files, scan.labels
        self.shapes = np.array(scan.shapes, dtype=np.int64).reshape(-1, 2)  # (h, w) per image
        self.label_files = img2label_paths(self.im_files)
        if single_cls:
            for lb in self.labels:
                lb[:, 0] = 0
        self.n = len(self.im_files)
        self.batch = np.floor(np.arange(self.n) / batch_size).astype(int)
        self.indices = range(self.n)
        if rect:
            self._sort_by_aspect_ratio(batch_size, img_size, stride, pad)
        self.ims: list[np.ndarray | None] = [None] * self.n
        self.im_hw0: list = [None] * self.n
        self.im_hw: list = [None] * self.n
        self.npy_files = [Path(f).with_suffix(".npy") for f in self.im_files]
        self.cache_mode: str | None = None
        self.lazy_cache = False
        self.cache_mode = self._cache_images(cache_images, prefix) if cache_images else None
        self.lazy_cache = self.cache_mode is None and self._resized_bytes() <= LAZY_CACHE_BYTES

    @staticmethod
    def _cache_path(path: str | Path | list, files: list[str]) -> Path:
        """Cache beside a .txt list file, else beside the first labels folder (<labels dir>.cache)."""
        p = path[0] if isinstance(path, (list, tuple)) and len(path) == 1 else path
        if isinstance(p, (str, Path)) and Path(p).is_file():
            return Path(p).with_suffix(".cache")
        return Path(img2label_paths(files[:1])[0]).parent.with_suffix(".cache")

    def _report(self, scan: LabelScan, prefix: str) -> None:
        """Log one warning per bad file and the summary line; refuse datasets that cannot work at all."""
        for msg in scan.msgs:
            LOGGER.warning(msg)
        self.scan = scan
        self.scan_summary = scan.summary(prefix)
        LOGGER.info(self.scan_summary + (" (cached)" if scan.from_cache else ""))
        if not scan.im_files:
            raise DatasetError(f"{prefix}all {scan.corrupt} images in {self.path} are corrupt; see warnings above")
        if scan.found == 0:
            msg = f"{prefix}no label files found for {self.path} (expected in a 'labels' folder beside 'images')"
            if self.augment:
                raise DatasetError(f"{msg}; cannot train without labels. {HELP}")
            LOGGER.warning(f"{prefix}WARNING ⚠️ {msg}")

    def _sort_by_aspect_ratio(self, batch_size: int, img_size: int, stride: int, pad: float) -> None:
        """Order images by h/w so each batch gets one small letterbox shape (Ultralytics batch-shape rule)."""
        ar = self.shapes[:, 0] / self.shapes[:, 1]  # h / w
        order = ar.argsort()
        self.im_files = [self.im_files[i] for i in order]
        self.label_files = [self.label_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.shapes, ar = self.shapes[order], ar[order]
        nb = int(self.batch[-1]) + 1
        shapes = [[1, 1]] * nb
        for i in range(nb):
            ari = ar[self.batch == i]
            lo, hi = ari.min(), ari.max()
            if hi < 1:
                shapes[i] = [hi, 1]
            elif lo > 1:
                shapes[i] = [1, 1 / lo]
        self.batch_shapes = np.ceil(np.array(shapes) * img_size / stride + pad).astype(int) * stride

    def _cache_images(self, mode: str | bool, prefix: str) -> str | None:
        """Cache resized images in RAM, or raw images as .npy beside them on disk; skip when it cannot fit."""
        mode = "ram" if mode is True else mode  # a bare --cache flag means RAM, as in Ultralytics
        if mode not in ("ram", "disk"):
            raise DatasetError(f"{prefix}cache must be 'ram', 'disk' or None, got {mode!r}")
        if mode == "ram" and not self._ram_fits(prefix):
            return None
        if mode == "disk" and not is_writable_dir(self.npy_files[0].parent):
            LOGGER.warning(f"{prefix}WARNING ⚠️ {self.npy_files[0].parent} is not writeable; not caching to disk")
            return None
        fn = self._save_npy if mode == "disk" else self.load_image
        with ThreadPoolExecutor(NUM_THREADS) as pool:
            for i, out in enumerate(pool.map(fn, range(self.n))):
                if mode == "ram":
                    self.ims[i], self.im_hw0[i], self.im_hw[i] = out
        LOGGER.info(f"{prefix}cached {self.n} images ({mode})")
        return mode

    def _resized_bytes(self) -> float:
        """Resized-image bytes of the whole set, estimated from up to 30 evenly spaced images (no RNG use)."""
        idx = np.linspace(0, self.n - 1, min(self.n, 30)).astype(int)
        sample = [self.shapes[i] for i in idx]
        return float(np.mean([h * w * 3 * (self.img_size / max(h, w)) ** 2 for h, w in sample]) * self.n)

    def _ram_fits(self, prefix: str, margin: float = 0.1) -> bool:
        """Whether the resized images fit in free RAM with a margin; warn when they do not."""
        need, avail = self._resized_bytes() * (1 + margin), psutil.virtual_memory().available
        if need > avail:
            LOGGER.warning(f"{prefix}WARNING ⚠️ {need / 2**30:.1f}GB RAM needed, {avail / 2**30:.1f}GB free; "
                           f"not caching images")
        return need <= avail

    def _save_npy(self, i: int) -> None:
        """Disk cache: raw BGR pixels, loaded later with allow_pickle=False."""
        if not self.npy_files[i].exists():
            tmp = self.npy_files[i].with_name(f".{self.npy_files[i].name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:  # temp + rename: a kill mid-write never leaves a damaged cache file
                np.save(f, self._read(i), allow_pickle=False)
            os.replace(tmp, self.npy_files[i])

    def _read(self, i: int) -> np.ndarray:
        """BGR pixels of image i (EXIF-rotated by OpenCV, matching the scanned shape)."""
        if self.cache_mode == "disk" and self.npy_files[i].exists():
            try:
                return np.load(self.npy_files[i], allow_pickle=False)
            except (OSError, ValueError, EOFError):  # damaged cache file (killed mid-write, disk error): rebuild
                self.npy_files[i].unlink(missing_ok=True)
                self._save_npy(i)
                return np.load(self.npy_files[i], allow_pickle=False)
        im = cv2.imread(self.im_files[i])
        if im is None:
            raise DatasetError(f"cannot read image {self.im_files[i]}; it was readable when scanned, was it changed?")
        return im

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Image i resized so its long side is img_size; returns (im, (h0, w0), (h, w))."""
        if self.ims[i] is not None:
            return self.ims[i], self.im_hw0[i], self.im_hw[i]
        im = self._read(i)
        h0, w0 = im.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            # INTER_AREA when shrinking for val (sharper, Ultralytics parity); LINEAR otherwise (faster)
            interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
            im = cv2.resize(im, (math.ceil(w0 * r), math.ceil(h0 * r)), interpolation=interp)
        if self.lazy_cache:  # kept by this process (each worker has its own copy); callers never write into it
            self.ims[i], self.im_hw0[i], self.im_hw[i] = im, (h0, w0), im.shape[:2]
        return im, (h0, w0), im.shape[:2]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int | tuple[int, int]):
        """(uint8 CHW RGB tensor, labels (n,6) [0, cls, cx, cy, w, h] normalized, file, shapes or None).

        An (index, seed) pair (from SeededBatchSampler) draws that sample's augmentation from its own seed.
        """
        if isinstance(index, tuple):
            with seeded_random(index[1]):
                return self._item(index[0])
        return self._item(index)

    def _item(self, index: int):
        index = self.indices[index]
        hyp = self.hyp
        if self.mosaic and random.random() < hyp["mosaic"]:
            img, labels = self.load_mosaic(index)
            shapes = None
            if random.random() < hyp["mixup"]:
                img, labels = mixup(img, labels, *self.load_mosaic(random.randint(0, self.n - 1)))
        else:
            img, labels, shapes = self._letterboxed(index)
        nl = len(labels)
        if nl:
            labels[:, 1:5] = xyxy2xywhn(labels[:, 1:5], w=img.shape[1], h=img.shape[0], clip=True, eps=1e-3)
        if self.augment:
            augment_hsv(img, hgain=hyp["hsv_h"], sgain=hyp["hsv_s"], vgain=hyp["hsv_v"])
            img, labels = random_flips(img, labels, hyp["flipud"], hyp["fliplr"])
        labels_out = torch.zeros((nl, 6))
        if nl:
            labels_out[:, 1:] = torch.from_numpy(labels)
        img = np.ascontiguousarray(img.transpose((2, 0, 1))[::-1])  # HWC BGR -> CHW RGB
        return torch.from_numpy(img), labels_out, self.im_files[index], shapes

    def _letterboxed(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple]:
        """One image letterboxed to its batch shape (or img_size); labels as pixel xyxy in that image."""
        img, (h0, w0), (h, w) = self.load_image(index)
        shape = self.batch_shapes[self.batch[index]] if self.rect else self.img_size
        img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
        shapes = (h0, w0), ((h / h0, w / w0), pad)  # lets val map boxes back to original pixels
        labels = self.labels[index].copy()
        if labels.size:
            labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, padw=pad[0], padh=pad[1])
        if self.augment:
            hyp = self.hyp
            img, labels = random_perspective(img, labels, degrees=hyp["degrees"], translate=hyp["translate"],
                                             scale=hyp["scale"], shear=hyp["shear"], perspective=hyp["perspective"])
        return img, labels, shapes

    def load_mosaic(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """4-image mosaic around a random centre, then a random perspective warp back to img_size."""
        s, hyp = self.img_size, self.hyp
        yc, xc = (int(random.uniform(-x, 2 * s + x)) for x in self.mosaic_border)
        indices = [index] + random.choices(self.indices, k=3)
        random.shuffle(indices)
        images = [self.load_image(i)[0] for i in indices]
        img4, labels4 = build_mosaic(images, [self.labels[i] for i in indices], s, xc, yc)
        return random_perspective(img4, labels4, degrees=hyp["degrees"], translate=hyp["translate"],
                                  scale=hyp["scale"], shear=hyp["shear"], perspective=hyp["perspective"],
                                  border=self.mosaic_border)

    @staticmethod
    def collate_fn(batch: list) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple]:
        """Stack images and concatenate labels, writing each label's image index into column 0."""
        im, label, path, shapes = zip(*batch)
        for i, lb in enumerate(label):
            lb[:, 0] = i
        return torch.stack(im, 0), torch.cat(label, 0), path, shapes


def seed_worker(worker_id: int) -> None:
    """Give each DataLoader worker its own but reproducible random/np.random streams (torch seeds it).

    Workers also run OpenCV single-threaded (as Ultralytics): they share the cores with the training
    threads, and extra OpenCV threads only add contention there.
    """
    cv2.setNumThreads(0)
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


@contextlib.contextmanager
def seeded_random(seed: int) -> Iterator[None]:
    """random and np.random seeded for one sample, the caller's streams restored afterwards."""
    state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(state)
        np.random.set_state(np_state)


class SeededBatchSampler(Sampler):
    """Batches of (index, seed) pairs; order and seeds are drawn from one generator in the main process.

    A sample's augmentation then depends only on that generator, not on which worker builds it or on
    worker restarts: workers persist across epochs, --workers 0 and 8 train on the same images, and a
    resumed run (generator state restored) repeats every draw.
    """

    def __init__(self, sampler: Sampler, batch_size: int, generator: torch.Generator) -> None:
        self.sampler, self.batch_size, self.generator = sampler, batch_size, generator

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = list(self.sampler)  # a RandomSampler draws its permutation from self.generator here
        seeds = torch.randint(0, 2**62, (len(order),), generator=self.generator).tolist()
        pairs = list(zip(order, seeds))
        for i in range(0, len(pairs), self.batch_size):
            yield pairs[i : i + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """DDP: a new shard permutation per epoch (DistributedSampler), the same on every rank."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


@contextlib.contextmanager
def _rank_zero_first(rank: int) -> Iterator[None]:
    """In DDP let rank 0 scan and write the label cache before the other ranks read it."""
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    if dist and rank not in (-1, 0):
        torch.distributed.barrier()
    yield
    if dist and rank == 0:
        torch.distributed.barrier()


def create_dataloader(path: str | Path | list, imgsz: int, batch_size: int, stride: int, single_cls: bool = False,
                      hyp: dict | None = None, augment: bool = False, cache: str | bool | None = None, pad: float = 0.0,
                      rect: bool = False, workers: int = 8, shuffle: bool = False, prefix: str = "", seed: int = 0,
                      rank: int = -1, nc: int | None = None) -> tuple[DataLoader, LoadImagesAndLabels]:
    """DataLoader + dataset with Ultralytics defaults (capped workers), seeded per sample, workers kept alive.

    Workers persist across epochs (as Ultralytics' InfiniteDataLoader): no re-fork of the training process
    and no copy-on-write of its memory every epoch. loader.batch_sampler.generator holds all randomness.
    """
    if rect and shuffle:
        LOGGER.warning(f"{prefix}WARNING ⚠️ --rect is incompatible with shuffle, setting shuffle=False")
        shuffle = False
    with _rank_zero_first(rank):
        dataset = LoadImagesAndLabels(path, imgsz, batch_size, augment=augment, hyp=hyp, rect=rect, stride=int(stride),
                                      pad=pad, prefix=prefix, single_cls=single_cls, nc=nc, cache_images=cache)
    batch_size = min(batch_size, len(dataset))
    nd = torch.cuda.device_count()
    nw = min((os.cpu_count() or 1) // max(nd, 1), batch_size if batch_size > 1 else 0, workers)
    generator = torch.Generator()
    generator.manual_seed(6148914691236517205 + seed + max(RANK, 0))
    worker_seeds = torch.Generator()  # separate: workers start once, so their seed must not shift the samples'
    worker_seeds.manual_seed(seed + max(RANK, 0))
    batches = SeededBatchSampler(_sampler(dataset, shuffle, rank, generator), batch_size, generator)
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=nw, pin_memory=torch.cuda.is_available(),
                        persistent_workers=nw > 0, collate_fn=LoadImagesAndLabels.collate_fn,
                        worker_init_fn=seed_worker, generator=worker_seeds)
    return loader, dataset


def _sampler(dataset: Dataset, shuffle: bool, rank: int, generator: torch.Generator) -> Sampler:
    """DDP shard (same permutation on every rank per epoch), else a seeded shuffle or the dataset order."""
    if rank != -1:
        return distributed.DistributedSampler(dataset, shuffle=shuffle)
    return RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)


class LoadImages:
    """detect.py source: a file, folder, glob, .txt list or list of those; images and videos (frame by frame)."""

    def __init__(self, path: str | Path | list, img_size: int | tuple = 640, stride: int = 32, auto: bool = True,
                 vid_stride: int = 1) -> None:
        files = _source_files(path)
        images = [f for f in files if _suffix(f) in IMG_FORMATS]
        videos = [f for f in files if _suffix(f) in VID_FORMATS]
        if not images and not videos:
            raise DatasetError(f"no images or videos found in {path}; supported images: {', '.join(IMG_FORMATS)}; "
                               f"videos: {', '.join(VID_FORMATS)}")
        self.img_size, self.stride, self.auto, self.vid_stride = img_size, stride, auto, max(int(vid_stride), 1)
        self.files = images + videos
        self.nf = len(self.files)
        self.video_flag = [False] * len(images) + [True] * len(videos)
        self.mode = "image"
        self.cap: cv2.VideoCapture | None = None
        self.frame = self.frames = 0
        self.count = 0
        self.skipped: list[str] = []  # unreadable image files, warned about once each

    def __iter__(self) -> LoadImages:
        self.count, self.skipped = 0, []
        return self

    def __next__(self) -> tuple[str, np.ndarray, np.ndarray, cv2.VideoCapture | None, str]:
        """(path, letterboxed CHW RGB uint8, original BGR, cap or None, 'image i/n path: ' description)."""
        im0 = None
        while im0 is None:  # an unreadable image is skipped with a warning; the rest of the source still runs
            if self.count == self.nf:
                if len(self.skipped) == self.nf:
                    raise DatasetError(f"cannot read image {', '.join(self.skipped[:3])}: no file of the source is a "
                                       "readable image; fix or remove them")
                raise StopIteration
            if self.video_flag[self.count]:
                path, im0, s = self._next_frame()
            else:
                path, im0, s = self._next_image()
        im = letterbox(im0, self.img_size, stride=self.stride, auto=self.auto)[0]
        im = np.ascontiguousarray(im.transpose((2, 0, 1))[::-1])  # HWC BGR -> CHW RGB
        return path, im, im0, self.cap, s

    def _next_image(self) -> tuple[str, np.ndarray | None, str]:
        """Next image file, or None (warned) when it cannot be decoded."""
        path = self.files[self.count]
        self.count += 1
        im0 = cv2.imread(path)
        if im0 is None:
            self.skipped.append(path)
            LOGGER.warning(f"WARNING ⚠️ skipping {path}: not a readable image file (corrupt or wrong format); "
                           "fix or remove it")
        return path, im0, f"image {self.count}/{self.nf} {path}: "

    def _next_frame(self) -> tuple[str, np.ndarray, str]:
        """Next (strided) frame of the current video, moving on to the next file when one ends."""
        self.mode = "video"
        if self.cap is None:
            self._open_video(self.files[self.count])
        for _ in range(self.vid_stride):
            self.cap.grab()
        ok, im0 = self.cap.retrieve()
        while not ok:  # this video is done
            self.cap.release()
            self.cap = None
            self.count += 1
            if self.count == self.nf:
                raise StopIteration
            if not self.video_flag[self.count]:  # cannot happen (videos last) but keep the invariant explicit
                raise StopIteration
            self._open_video(self.files[self.count])
            ok, im0 = self.cap.read()
        self.frame += 1
        path = self.files[self.count]
        return path, im0, f"video {self.count + 1}/{self.nf} ({self.frame}/{self.frames}) {path}: "

    def _open_video(self, path: str) -> None:
        """Open a video and count its (strided) frames; unreadable video is an error naming the file."""
        self.frame = 0
        self.cap = cv2.VideoCapture(path)
        if not self.cap.isOpened():
            raise DatasetError(f"cannot open video {path}: unsupported codec or corrupt file")
        self.frames = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) / self.vid_stride)

    def __len__(self) -> int:
        return self.nf


def _source_files(path: str | Path | list) -> list[str]:
    """Expand a detect source into files: .txt list lines (file order kept), globs and folders (sorted), files."""
    if isinstance(path, (str, Path)) and Path(path).suffix == ".txt" and Path(path).is_file():
        base = Path(path).parent
        entries = [e if os.path.isabs(e) or not (base / e).exists() else str(base / e)
                   for e in Path(path).read_text(encoding="utf-8").split()]
    else:
        entries = sorted(str(p) for p in path) if isinstance(path, (list, tuple)) else [str(path)]
    files: list[str] = []
    for p in entries:
        p = str(Path(p).expanduser().resolve()) if "*" not in p else os.path.abspath(os.path.expanduser(p))
        if "*" in p:
            files.extend(sorted(glob.glob(p, recursive=True)))
        elif os.path.isdir(p):
            files.extend(sorted(glob.glob(os.path.join(p, "*.*"))))
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise DatasetError(f"source {p} does not exist; pass an image, video, folder, glob or .txt list")
    return files
