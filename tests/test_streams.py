"""detect.py on live sources: an MJPEG stream served on 127.0.0.1 by the test itself, and sources that cannot open."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import pytest

import detect
from utils.assets import ROOT
from utils.data_config import DatasetError
from utils.streams import LoadStreams, is_stream

FRAMES = 6


def _mjpeg_server(jpg: bytes, frames: int) -> ThreadingHTTPServer:
    """A loopback-only server sending `frames` JPEGs as multipart/x-mixed-replace, then closing the connection."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            for _ in range(frames):
                part = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                self.wfile.write(part + jpg + b"\r\n")
                time.sleep(0.05)

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture()
def mjpeg_url(bus_jpg: Path) -> Iterator[str]:
    im = cv2.resize(cv2.imread(str(bus_jpg)), (240, 320))
    server = _mjpeg_server(cv2.imencode(".jpg", im)[1].tobytes(), FRAMES)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/stream.mjpg"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_is_stream() -> None:
    assert all(is_stream(s) for s in ("0", "rtsp://cam/live", "RTMP://x", "http://h/a.mjpg", "https://h/v", "screen",
                                        "screen 0 100 100 512 256"))
    assert not any(is_stream(s) for s in ("bus.jpg", "data/images", "./0.jpg", "screenshot.png", None))


def test_stream_frames_and_vid_stride(mjpeg_url: str) -> None:
    frames = list(LoadStreams(mjpeg_url, img_size=320, stride=32, vid_stride=2))
    assert 1 <= len(frames) <= FRAMES // 2 + 1  # the first frame, then at most every 2nd of the rest
    path, im, im0, cap, s = frames[0]
    assert path == mjpeg_url and im0.shape == (320, 240, 3) and im.shape[0] == 3 and s.startswith("stream ")


def test_detect_on_http_stream(tmp_path: Path, yolov5n_pt: Path, mjpeg_url: str, project_log) -> None:
    t0 = time.time()
    out = detect.run(weights=str(yolov5n_pt), source=mjpeg_url, imgsz=320, save_txt=True, project=str(tmp_path))
    assert time.time() - t0 < 60
    video = cv2.VideoCapture(str(out / "stream.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) >= 1
    assert list((out / "labels").glob("stream_*.txt"))  # bus.jpg: people and a bus in every frame
    stopped = [r.getMessage() for r in project_log.records if "stopped after" in r.getMessage()]
    assert len(set(stopped)) == 1 and mjpeg_url in stopped[0]  # one line (caplog may see it via two handlers)


def test_unreachable_stream_is_one_line_and_fast(tmp_path: Path, yolov5n_pt: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/stream.mjpg"
    with pytest.raises(DatasetError, match=f"cannot open stream {url}"):
        LoadStreams(url)
    t0 = time.time()
    r = subprocess.run([sys.executable, str(ROOT / "detect.py"), "--weights", str(yolov5n_pt), "--source", url,
                        "--project", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and time.time() - t0 < 60
    err = r.stderr.strip().splitlines()
    assert err[-1].startswith(f"ERROR: cannot open stream {url}: check the URL") and "Traceback" not in r.stderr
    assert not list(tmp_path.iterdir())  # no empty run folder


def test_screen_source_says_unsupported() -> None:
    with pytest.raises(DatasetError, match="screen capture is not supported here"):
        LoadStreams("screen")
