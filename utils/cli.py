"""CLI error policy: bad input gets one clear line (file + fix) and exit code 2, never a bare traceback."""
from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterable, Iterator

from utils.logger import LOGGER
from utils.torch_utils import select_device

USER_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError)
# Filesystem refusals the user fixes (permissions, read-only mounts, full disks), not bugs worth a traceback
STORAGE_ERRNOS = {errno.EACCES: "choose a folder you can write to (e.g. --project) or fix its permissions",
                  errno.EPERM: "choose a folder you can write to (e.g. --project) or fix its permissions",
                  errno.EROFS: "the filesystem is read-only; choose a writable folder (e.g. --project)",
                  errno.ENOSPC: "free disk space or choose a folder on another disk (e.g. --project)",
                  errno.EDQUOT: "your disk quota is used up; free space or choose another folder (e.g. --project)"}


MAX_IMGSZ = 8192  # 16x the usual 640 (and well past any letterbox worth running on a CPU)


def check_options(imgsz: int | Iterable[int] | None = None, batch_size: int | None = None,
                  device: str | None = None, threads: int | None = None) -> None:
    """Refuse impossible --img/--batch-size/--device/--threads in one line, before any run folder, model or data is
    touched."""
    for size in [imgsz] if isinstance(imgsz, int) else list(imgsz or []):
        if not 1 <= int(size) <= MAX_IMGSZ:
            raise ValueError(f"--img {size}: image size must be between 1 and {MAX_IMGSZ} pixels (e.g. --img 640)")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: must be at least 1 (e.g. --batch-size 32)")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads {threads}: must be at least 1 (e.g. --threads 4), or leave it out for the "
                         f"engine's default")
    if device is not None:
        select_device(device)  # --device cuda:0 on a CPU build: the same one line train.py gives


def check_model_classes(model_names: list[str], data: dict, weights: str | object, single_cls: bool = False) -> None:
    """Refuse a model whose class count differs from the data yaml's: it ends in IndexError or a silent mAP ~0."""
    if single_cls or not model_names or len(model_names) == data["nc"]:
        return
    raise ValueError(f"{weights}: model has {len(model_names)} classes but {data.get('yaml_file') or 'the dataset'} "
                     f"has nc={data['nc']}; use the data yaml the model was trained on, or --single-cls to score "
                     f"boxes without classes")


def warn_unknown_classes(classes: list[int] | None, names: list[str]) -> None:
    """--classes ids the model does not have would silently filter out every detection: say so in one line."""
    unknown = [c for c in classes or [] if not 0 <= c < len(names)]
    if unknown and names:
        LOGGER.warning(
            f"WARNING ⚠️ --classes {' '.join(map(str, unknown))}: not classes of this model "
            f"(ids 0-{len(names) - 1}); "
            f"they match no detection")


def warn_fixed_imgsz(requested: int | list[int] | tuple[int, ...], fixed: tuple[int, int] | None, file: str) -> None:
    """A static-shape file runs at its own size whatever --imgsz says: one line, so the user knows which size ran."""
    req = [requested] * 2 if isinstance(requested, int) else list(requested) * (2 if len(requested) == 1 else 1)
    if fixed and tuple(req[:2]) != tuple(fixed):
        LOGGER.warning(
            f"WARNING ⚠️ --imgsz {req[0]}x{req[1]} ignored: {file} has a fixed {fixed[0]}x{fixed[1]} input; running "
            f"at {fixed[0]}x{fixed[1]} (re-export with --imgsz or --dynamic to change it)")


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Our own error classes, imported lazily so the CLI wrapper stays cheap."""
    types = list(USER_ERRORS)
    for mod, name in (("utils.checkpoint", "CheckpointError"), ("utils.data_config", "DatasetError"),
                      ("utils.engines.base", "EngineUnavailable")):
        with contextlib.suppress(ImportError, AttributeError):
            types.append(getattr(__import__(mod, fromlist=[name]), name))
    return tuple(types)


def user_error_message(e: BaseException) -> str | None:
    """The one line to print for a user error, or None when `e` is a bug that deserves its traceback."""
    if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
        where = e.filename if e.filename is not None else "a file"
        return f"{where}: {e.strerror or e}; {STORAGE_ERRNOS[e.errno]}"
    if isinstance(e, _user_error_types()):
        return str(e)
    return None


@contextlib.contextmanager
def exit_on_user_error(code: int = 2) -> Iterator[None]:
    """Wrap a script's main(): known user errors print 'ERROR: ...' and exit `code`; YOLOV5_DEBUG=1 shows tracebacks."""
    try:
        yield
    except Exception as e:
        msg = user_error_message(e)
        if msg is None or os.environ.get("YOLOV5_DEBUG"):
            raise
        print(f"ERROR: {msg}", file=sys.stderr)
        sys.exit(code)


@contextlib.contextmanager
def exit_on_interrupt(code: int = 130) -> Iterator[None]:
    """Ctrl-C: one line (the interrupt's hint, e.g. the resume command), not a traceback; exit 130 as shells do."""
    try:
        yield
    except KeyboardInterrupt as e:
        print(f"\nInterrupted{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        sys.exit(code)
