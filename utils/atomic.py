"""Write a file or folder under a temporary name in the same folder, then rename: readers never see half a file.

Checkpoints, ONNX exports and OpenVINO IR folders all go through here, so a full disk, a SIGTERM or a crash leaves
either the new complete result or the previous one, never a truncated file at the final path.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

_TORCH_WRITE_FAILURE = re.compile(r"PytorchStreamWriter|inline_container|unexpected pos|file write failed")


class AtomicWriteError(Exception):
    """A result that could not be written (disk full, read-only folder); any earlier file there is untouched."""


def is_write_failure(e: BaseException) -> bool:
    """OS errors, and the RuntimeErrors torch.save raises when its zip writer hits a full disk."""
    return isinstance(e, OSError) or (isinstance(e, RuntimeError) and bool(_TORCH_WRITE_FAILURE.search(str(e))))


def write_error(path: Path, e: BaseException, what: str = "file") -> AtomicWriteError:
    """One line: which file and folder, why, how much space is left, what to do, and that nothing was lost."""
    reason = (e.strerror or str(e)) if isinstance(e, OSError) else "the write failed part-way"
    folder = next((p for p in (path.parent, *path.parents) if p.exists()), None)
    try:
        free = f"{shutil.disk_usage(folder).free / 1e6:.0f} MB free there" if folder else "folder missing"
    except OSError:
        free = "free space unknown"
    kept = f"the previous {path.name} is intact" if path.exists() else "no earlier file was touched"
    return AtomicWriteError(f"cannot write {what} {path.name} in {path.parent}: {reason} ({free}). "
                            f"Free disk space or choose a writable folder (e.g. --project); {kept}.")


@contextlib.contextmanager
def atomic_path(path: str | Path, what: str = "file", folder: bool = False) -> Iterator[Path]:
    """Yield a temp path beside `path` (a file, or an empty folder with folder=True); rename it into place on success.

    The pid in the temp name lets a later writer tell a dead writer's leftover from a live writer's.
    """
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)
        prefix, suffix = f".{path.name}.{os.getpid()}.", ".tmpdir" if folder else ".tmp"
        if folder:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=path.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
            os.close(fd)
            tmp = Path(name)
        yield tmp
        _put_in_place(tmp, path, folder)
    except BaseException as e:
        if tmp is not None:
            _remove(tmp)
        if is_write_failure(e):
            raise write_error(path, e, what) from None
        raise
    fsync_dir(path.parent)  # make the rename itself survive a power cut


def _put_in_place(tmp: Path, path: Path, folder: bool) -> None:
    """Files: one atomic rename. Folders cannot replace a non-empty folder atomically: swap via a side name."""
    if not folder:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
        return
    os.chmod(tmp, 0o755)
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    _remove(old)


def _remove(p: Path) -> None:
    """Delete a temp file or folder, quietly: cleanup must not hide the error that caused it."""
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def remove_stale_temps(path: Path) -> None:
    """Delete temp files of `path` left by writers that were killed mid-write (their pid is gone, or is ours)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.(?:.*\.)?(?:tmp|tmpdir|old)")
    for f in path.parent.glob(f".{path.name}.*"):
        m = pattern.fullmatch(f.name)
        if m and (int(m.group(1)) == os.getpid() or not pid_alive(int(m.group(1)))):
            _remove(f)


def pid_alive(pid: int) -> bool:
    """Signal 0 probes a pid without touching it: is the writer that owns a temp file still running?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def fsync_file(path: Path) -> None:
    """Flush a finished temp file to disk before the rename publishes it."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(folder: Path) -> None:
    """fsync a directory entry; some filesystems refuse, which only costs durability, never correctness."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
