"""Run folders and small file helpers shared by every script."""
from __future__ import annotations

import atexit
import os
import time
from pathlib import Path

from utils.atomic import pid_alive

LOCK_NAME = ".run.lock"  # in a run folder: pid of the process writing into it (--exist-ok runs share a name)


class RunDirBusy(ValueError):
    """The --exist-ok run folder belongs to a process that is still running; the message names it."""


def increment_path(path: str | Path, exist_ok: bool = False, mkdir: bool = False, sep: str = "") -> Path:
    """runs/detect/exp -> runs/detect/exp2, exp3, ... so earlier results are never overwritten.

    mkdir=True claims the folder atomically (claim_run_dir); without it the name is only a proposal.
    """
    if mkdir:
        return claim_run_dir(path, exist_ok=exist_ok, sep=sep)
    path = Path(path)
    if path.exists() and not exist_ok:
        stem, suffix = (path.with_suffix(""), path.suffix) if path.is_file() else (path, "")
        n = 2
        while Path(f"{stem}{sep}{n}{suffix}").exists():
            n += 1
        path = Path(f"{stem}{sep}{n}{suffix}")
    return path


def claim_run_dir(path: str | Path, exist_ok: bool = False, sep: str = "") -> Path:
    """Create and own a run folder: runs started at once get exp, exp2, exp3 (mkdir is atomic, so no two share one).

    exist_ok reuses the folder but takes its lock file, so two live runs never interleave their results.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if exist_ok:
        path.mkdir(exist_ok=True)
        lock_run_dir(path)
        return path
    candidate, n = path, 2
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            candidate, n = Path(f"{path}{sep}{n}"), n + 1


def _lock_owner(lock: Path) -> int | None:
    """pid written in a lock file; None when unreadable (a second look covers a writer caught mid-write)."""
    for _ in range(2):
        try:
            return int(lock.read_text().strip())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            time.sleep(0.05)
    return None


def lock_run_dir(path: Path) -> None:
    """Take `path`'s lock for this process; refuse in one line while a live process holds it, take over a stale one."""
    lock = path / LOCK_NAME
    for _ in range(5):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner == os.getpid():
                return
            if owner is not None and pid_alive(owner):
                raise RunDirBusy(f"{path}: in use by running process {owner} (its {LOCK_NAME}); wait for it to "
                                 f"finish, or choose another --name, or drop --exist-ok") from None
            lock.unlink(missing_ok=True)  # its owner is gone: a stale lock from a killed run
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        atexit.register(_release_lock, lock, os.getpid())
        return
    raise RunDirBusy(f"{path}: could not take {LOCK_NAME} (other runs keep claiming it); choose another --name")


def _release_lock(lock: Path, pid: int) -> None:
    """At exit: remove the lock only if it is still ours (forked children must not release the parent's)."""
    if os.getpid() == pid and _lock_owner(lock) == pid:
        lock.unlink(missing_ok=True)
