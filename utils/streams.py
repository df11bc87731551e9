"""detect.py live sources: webcam indexes and rtsp/rtmp/http(s) streams through OpenCV's VideoCapture.

A background thread reads the stream so a slow model never makes it lag: each step detects on the newest frame and
frames that arrived meanwhile are dropped, as Ultralytics' LoadStreams does.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import cv2
import numpy as np

from utils.augmentations import letterbox
from utils.data_config import DatasetError
from utils.dataloaders import LoadImages

LOGGER = logging.getLogger("yolov5-sparse")
STREAM_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://")
OPEN_TIMEOUT_MS = 10_000  # FFmpeg gives up on an unreachable host after this instead of hanging on the socket
READ_TIMEOUT_S = 10.0  # no new frame for this long counts as a dropped stream


def is_stream(source: str | Path | None) -> bool:
    """A webcam index ('0'), a stream URL, or 'screen': sources that are not files, so never resolved as paths."""
    s = str(source or "")
    return s.isnumeric() or s.lower().startswith(STREAM_SCHEMES) or is_screen(s)


def is_screen(source: str) -> bool:
    """Ultralytics' 'screen [n left top width height]' source; screenshot.png stays a file."""
    return source.lower() == "screen" or source.lower().startswith("screen ")


def load_source(source: str, img_size: int | tuple, stride: int, vid_stride: int = 1) -> LoadImages | LoadStreams:
    """detect.py's one entry for any --source: live sources stream, everything else is read as files."""
    if is_stream(source):
        return LoadStreams(source, img_size=img_size, stride=stride, vid_stride=vid_stride)
    return LoadImages(source, img_size=img_size, stride=stride, vid_stride=vid_stride)


def capture_fps(cap: cv2.VideoCapture, default: float = 30.0) -> float:
    """The capture's frame rate, or `default` when it reports 0 or a stream's 90 kHz clock (saved videos need one)."""
    fps = cap.get(cv2.CAP_PROP_FPS)
    return fps if 0 < fps < 1000 else default


def open_capture(source: str) -> cv2.VideoCapture:
    """VideoCapture for a webcam index or URL; one line naming it when it cannot be opened."""
    if is_screen(source):
        raise DatasetError(f"--source {source}: screen capture is not supported here; record the screen to a video "
                           "file or stream and pass that")
    if source.isnumeric():
        cap = cv2.VideoCapture(int(source))
        fix = "check the camera is connected and not used by another program, or try another index"
    else:
        cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS,
                                                         cv2.CAP_PROP_READ_TIMEOUT_MSEC, OPEN_TIMEOUT_MS])
        fix = "check the URL, that the server is running and reachable, and its credentials"
    if not cap.isOpened():
        raise DatasetError(f"cannot open stream {source}: {fix}")
    return cap


class LoadStreams:
    """Frames of one live source, newest first; yields what LoadImages yields so detect.py has one loop."""

    def __init__(self, source: str, img_size: int | tuple = 640, stride: int = 32, auto: bool = True,
                 vid_stride: int = 1, timeout_s: float = READ_TIMEOUT_S) -> None:
        self.source, self.img_size, self.stride, self.auto = str(source), img_size, stride, auto
        self.vid_stride, self.timeout_s = max(int(vid_stride), 1), timeout_s
        self.cap = open_capture(self.source)
        ok, frame = self.cap.read()
        if not ok:
            self.cap.release()
            raise DatasetError(f"cannot read stream {self.source}: it opened but sent no frame; check the source")
        self.fps = capture_fps(self.cap)
        self._frame: np.ndarray | None = frame
        self._new = threading.Condition()
        self._alive = True
        self.received, self.count = 1, 0
        self._thread = threading.Thread(target=self._update, daemon=True)
        self._thread.start()
        LOGGER.info(f"Stream {self.source}: {frame.shape[1]}x{frame.shape[0]} at {self.fps:.0f} FPS")

    def _update(self) -> None:
        """Read every frame (grab is cheap), decode every vid_stride-th, keep only the newest."""
        n = 0
        while self._alive and self.cap.grab():
            n += 1
            if n % self.vid_stride:
                continue
            ok, frame = self.cap.retrieve()
            if not ok:
                break
            with self._new:
                self._frame, self.received = frame, self.received + 1
                self._new.notify()
        with self._new:
            self._alive = False
            self._new.notify()

    def __iter__(self) -> LoadStreams:
        return self

    def __next__(self) -> tuple[str, np.ndarray, np.ndarray, cv2.VideoCapture, str]:
        """(source, letterboxed CHW RGB uint8, newest BGR frame, cap, description); stops when the stream ends."""
        with self._new:
            if self._frame is None and self._alive:
                self._new.wait_for(lambda: self._frame is not None or not self._alive, timeout=self.timeout_s)
            im0, self._frame = self._frame, None
            alive = self._alive
        if im0 is None:
            self.close()
            why = "it ended or the connection dropped" if not alive else f"no frame for {self.timeout_s:g} s"
            LOGGER.warning(f"WARNING ⚠️ stream {self.source} stopped after {self.received} frames ({why}); check the "
                           "camera or network connection")
            raise StopIteration
        self.count += 1
        im = letterbox(im0, self.img_size, stride=self.stride, auto=self.auto)[0]
        im = np.ascontiguousarray(im.transpose((2, 0, 1))[::-1])  # HWC BGR -> CHW RGB
        return self.source, im, im0, self.cap, f"stream {self.source} frame {self.count}: "

    def close(self) -> None:
        """Stop the reader thread and free the device or connection."""
        self._alive = False
        self._thread.join(timeout=1.0)
        if not self._thread.is_alive():  # a reader stuck in grab() past the join would crash on a released cap
            self.cap.release()

    def __len__(self) -> int:
        return 0  # unknown: a live source has no end
