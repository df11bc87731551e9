"""Shared fixtures: assets come from one setting and are never copied into the project."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import utils.sparsity.rebuild  # noqa: E402,F401  (tests load sparse/QAT/channel checkpoints like the scripts do)
from utils.assets import asset, assets_dir  # noqa: E402
from utils.engines import load_engine  # noqa: E402
from utils.predict import Predictor  # noqa: E402


def writable_copy(weights: Path, folder: Path) -> Path:
    """A copy of a read-only asset checkpoint in folder, so exports land beside it (in a test's tmp dir)."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(weights, folder / Path(weights).name))


def detections_by_file(files: dict[str, Path], engine: str, size: int, image: Path) -> dict[str, np.ndarray]:
    """Each file's detections on one image (conf 0.25, IoU 0.45, one engine thread): layouts that must agree."""
    im = cv2.imread(str(image))
    return {k: Predictor(load_engine(f, engine, num_threads=1), (size, size), 0.25, 0.45)([im])[0]
            for k, f in files.items()}


@pytest.fixture(scope="session")
def assets() -> Path:
    """Root of the shared assets; a missing folder fails loudly with where we looked."""
    path = assets_dir()
    assert path.is_dir(), f"shared assets not found at {path}: set YOLOV5_SPARSE_ASSETS"
    return path


@pytest.fixture(scope="session")
def yolov5n_pt() -> Path:
    return asset("weights/yolov5n.pt")


@pytest.fixture(scope="session")
def bus_jpg() -> Path:
    return asset("images/bus.jpg")


@pytest.fixture(scope="session")
def coco128_dir() -> Path:
    return asset("coco128")


@pytest.fixture()
def project_log(caplog):
    """caplog that also sees the project logger after a script's setup_logging() stopped its propagation."""
    from utils.logger import LOGGER

    LOGGER.addHandler(caplog.handler)
    yield caplog
    LOGGER.removeHandler(caplog.handler)
