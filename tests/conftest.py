"""Shared fixtures: assets come from one setting and are never copied into the project."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import utils.sparsity.rebuild  # noqa: E402,F401  (tests load sparse/QAT/channel checkpoints like the scripts do)
from utils.assets import asset, assets_dir  # noqa: E402


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
