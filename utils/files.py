"""Run folders and small file helpers shared by every script."""
from __future__ import annotations

from pathlib import Path

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
