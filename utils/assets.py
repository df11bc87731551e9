"""The one setting that locates shared test/benchmark assets (weights, COCO128, demo images)."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS_ENV = "YOLOV5_SPARSE_ASSETS"


def assets_dir() -> Path:
    """Directory of shared assets: $YOLOV5_SPARSE_ASSETS, else ../shared/assets beside the checkout."""
    return Path(os.environ.get(ASSETS_ENV, ROOT.parent / "shared" / "assets")).resolve()


def asset(relative: str) -> Path:
    """Path of one asset, failing with a message that says where we looked and how to fix it."""
    path = assets_dir() / relative
    if not path.exists():
        raise FileNotFoundError(
            f"asset '{relative}' not found at {path}. Set {ASSETS_ENV} to the folder holding the "
            f"shared assets (default: ../shared/assets beside the repository)."
        )
    return path
