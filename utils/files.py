"""Run folders and small file helpers shared by every script."""
from __future__ import annotations

import logging
from pathlib import Path

LOGGER = logging.getLogger("yolov5-sparse")


def increment_path(path: str | Path, exist_ok: bool = False, mkdir: bool = False, sep: str = "") -> Path:
    """runs/detect/exp -> runs/detect/exp2, exp3, ... so earlier results are never overwritten."""
    path = Path(path)
    if path.exists() and not exist_ok:
        stem, suffix = (path.with_suffix(""), path.suffix) if path.is_file() else (path, "")
        n = 2
        while Path(f"{stem}{sep}{n}{suffix}").exists():
            n += 1
        path = Path(f"{stem}{sep}{n}{suffix}")
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path


def setup_logging(verbose: bool = True) -> logging.Logger:
    """One plain console logger (Ultralytics prints bare lines; so do we)."""
    if not LOGGER.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        LOGGER.addHandler(handler)
        LOGGER.propagate = False
    LOGGER.setLevel(logging.INFO if verbose else logging.WARNING)
    lib = logging.getLogger("utils")  # library modules log under utils.*: their INFO lines (scan counts) belong here
    if not lib.handlers and not logging.getLogger().handlers:  # nobody else prints them (train.py configures root)
        lib.addHandler(LOGGER.handlers[0])
    lib.setLevel(LOGGER.level)
    return LOGGER
