"""CLI error policy: bad input gets one clear line (file + fix) and exit code 2, never a bare traceback."""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError)


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Our own error classes, imported lazily so the CLI wrapper stays cheap."""
    types = list(USER_ERRORS)
    for mod, name in (("utils.checkpoint", "CheckpointError"), ("utils.data_config", "DatasetError"),
                      ("utils.engines.base", "EngineUnavailable")):
        with contextlib.suppress(ImportError, AttributeError):
            types.append(getattr(__import__(mod, fromlist=[name]), name))
    return tuple(types)


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Wrap a script's main(): known user errors print 'ERROR: ...' and exit 2; set YOLOV5_DEBUG=1 for tracebacks."""
    try:
        yield
    except _user_error_types() as e:
        if os.environ.get("YOLOV5_DEBUG"):
            raise
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(2)
