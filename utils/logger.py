"""The project's one logger: every module logs through LOGGER, scripts call setup_logging() once."""
from __future__ import annotations

import logging

LOGGER = logging.getLogger("yolov5-sparse")


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
