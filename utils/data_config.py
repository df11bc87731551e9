"""Dataset yaml checking: one place that turns a user's data.yaml into resolved, validated paths and names."""
from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import yaml

from utils.assets import assets_dir

ROOT = Path(__file__).resolve().parents[1]
DATASETS_DIR = ROOT.parent / "datasets"  # Ultralytics convention: datasets live beside the repository
SPLITS = ("train", "val", "test")
URL_SCHEMES = ("http://", "https://", "file://")  # download: values fetched as archives; anything else is Python
LOGGER = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A problem with the user's dataset or its yaml; the message is one line naming the file and the fix."""


def check_dataset(data: str | Path | dict, autodownload: bool = True, allow_code: bool = False) -> dict:
    """Validate a dataset yaml (or dict) and return it with absolute split paths, `names` as a list and `nc`.

    A `download:` that is Python text runs only with allow_code (--allow-download-code): a yaml is data, not a script.
    """
    yaml_file, cfg = _load_config(data)
    where = str(yaml_file) if yaml_file else "dataset dict"
    _check_types(cfg, where)
    cfg["names"] = _parse_names(cfg, where)
    cfg["nc"] = len(cfg["names"])
    root = _resolve_root(cfg.get("path"), yaml_file)
    cfg["path"] = str(root)
    for split in SPLITS:
        if cfg.get(split):
            cfg[split] = _resolve_split(cfg[split], root)
    cfg["yaml_file"] = str(yaml_file) if yaml_file else None
    missing = _missing_paths(cfg["val"])
    if missing:
        _fetch_missing(cfg, where, missing, autodownload, allow_code)
    return cfg


def names_for_model(data: str | Path, model_names: list[str]) -> list[str]:
    """detect.py --data: the yaml's class names for a model whose file has none (or others); the model's on a count
    mismatch, with one warning line, since names indexed past the yaml's list would crash mid-run."""
    yaml_file, cfg = _load_config(data)
    _check_types({"train": "-", "val": "-", **cfg}, str(yaml_file))  # only names/nc matter for detection
    names = _parse_names(cfg, str(yaml_file))
    if model_names and len(names) != len(model_names):
        logging.getLogger("yolov5-sparse").warning(
            f"WARNING ⚠️ --data {yaml_file}: {len(names)} class names but the model predicts {len(model_names)} "
            f"classes; keeping the model's names (pass the data yaml the model was trained on)")
        return model_names
    return names


def _load_config(data: str | Path | dict) -> tuple[Path | None, dict]:
    """Read the yaml (looking in data/ for a bare name like 'coco128.yaml'); dicts are copied, not mutated."""
    if isinstance(data, dict):
        return None, dict(data)
    if not isinstance(data, (str, Path)):
        raise DatasetError(f"data must be a yaml path or a dict, got {type(data).__name__}")
    file = Path(data)
    if not file.exists() and not file.is_absolute() and (ROOT / "data" / file).exists():
        file = ROOT / "data" / file
    if not file.is_file():
        raise DatasetError(f"{data}: dataset yaml not found; pass a path to an existing .yaml file")
    try:
        cfg = yaml.safe_load(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DatasetError(f"{file}: not a text file (byte {e.start} is not UTF-8); pass a dataset .yaml") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise DatasetError(f"{file}:{line} invalid YAML ({getattr(e, 'problem', e)}); fix the syntax") from None
    if not isinstance(cfg, dict):
        raise DatasetError(f"{file}: expected a mapping with keys path/train/val/names, got {type(cfg).__name__}")
    return file.resolve(), cfg


def _check_types(cfg: dict, where: str) -> None:
    """Fail on a missing or mistyped key with one line naming it, before any path is touched."""
    for key in ("train", "val"):
        if not cfg.get(key):
            raise DatasetError(f"{where}: key '{key}' is missing or empty; set it to an image folder or .txt list")
    if "names" not in cfg and "nc" not in cfg:
        raise DatasetError(f"{where}: key 'names' is missing; list the class names (or give 'nc')")
    for key in SPLITS:
        value = cfg.get(key)
        ok = value is None or isinstance(value, str) or (
            isinstance(value, list) and all(isinstance(v, str) and v for v in value))
        if not ok:
            raise DatasetError(f"{where}: key '{key}' must be a path string or a list of path strings, got {value!r}")
    for key in ("path", "download"):
        if cfg.get(key) is not None and not isinstance(cfg[key], (str, Path)):
            raise DatasetError(f"{where}: key '{key}' must be a string, got {type(cfg[key]).__name__}")
    nc = cfg.get("nc")
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or nc < 1):
        raise DatasetError(f"{where}: key 'nc' must be a positive integer, got {nc!r}")


def _parse_names(cfg: dict, where: str) -> list[str]:
    """Accept names as a list or an {id: name} dict with ids 0..n-1; cross-check against nc."""
    names, nc = cfg.get("names"), cfg.get("nc")
    if names is None:
        return [f"class{i}" for i in range(nc)]
    if isinstance(names, dict):
        if not all(isinstance(k, int) and not isinstance(k, bool) for k in names):
            raise DatasetError(f"{where}: key 'names' must map integer ids to names, e.g. '0: person'")
        if sorted(names) != list(range(len(names))):
            raise DatasetError(f"{where}: key 'names' ids must be 0..{len(names) - 1} without gaps")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{where}: key 'names' must be a non-empty list or {{id: name}} dict")
    blank = [i for i, n in enumerate(names) if n is None or not str(n).strip()]
    if blank:  # a stray '-' or 'null' would silently become a class called 'None'
        raise DatasetError(f"{where}: key 'names' entry {blank[0]} is empty; give every class a name")
    names = [str(n) for n in names]
    if nc is not None and nc != len(names):
        raise DatasetError(f"{where}: key 'nc' is {nc} but 'names' has {len(names)} entries; make them agree")
    return names


def _resolve_root(path: str | Path | None, yaml_file: Path | None) -> Path:
    """Dataset root: absolute as given; relative tries the yaml's folder, the repo, then ../datasets/<name>.

    $YOLOV5_SPARSE_ASSETS in a path expands to the shared-assets folder (utils/assets.py), set or not.
    """
    if path and "$YOLOV5_SPARSE_ASSETS" in str(path):
        path = str(path).replace("$YOLOV5_SPARSE_ASSETS", str(assets_dir()))
    p = Path(os.path.expanduser(os.path.expandvars(str(path)))) if path else Path(".")
    if p.is_absolute():
        return p
    base = yaml_file.parent if yaml_file else Path.cwd()
    candidates = [base / p, ROOT / p, DATASETS_DIR / p.name]
    for c in candidates:
        if c.exists():
            return c.resolve()
    return (DATASETS_DIR / p.name).resolve() if path else base.resolve()  # where a download will put it


def _resolve_split(value: str | list[str], root: Path) -> str | list[str]:
    """Make split paths absolute against the root (Ultralytics also retries a leading '../' inside the root)."""
    def one(v: str) -> str:
        """One split entry made absolute."""
        x = (root / v).resolve()
        if not x.exists() and v.startswith("../"):
            alt = (root / v[3:]).resolve()
            x = alt if alt.exists() else x
        return str(x)
    return one(value) if isinstance(value, str) else [one(v) for v in value]


def _missing_paths(value: str | list[str]) -> list[str]:
    """Split paths that do not exist on disk."""
    return [v for v in ([value] if isinstance(value, str) else value) if not Path(v).exists()]


def is_download_code(source: str) -> bool:
    """A download entry that is not a URL is Python text (the Ultralytics snippet form)."""
    return not str(source).startswith(URL_SCHEMES)


def _refuse_code(source: str, where: str, missing: str) -> None:
    """One line showing what the yaml would run and the flag that allows it; nothing is executed."""
    code = str(source).strip()
    shown = repr(code if len(code) <= 200 else code[:200] + " ...")
    raise DatasetError(f"{where}: dataset not found (missing {missing}) and its 'download' is Python code, not run "
                       f"without --allow-download-code: {shown}; read it, then rerun with --allow-download-code "
                       f"if you trust it, or put the dataset there yourself")


def _fetch_missing(cfg: dict, where: str, missing: list[str], autodownload: bool, allow_code: bool = False) -> None:
    """Run the yaml's download step when val data is missing, else fail with how to fix it."""
    source = cfg.get("download")
    fix = f"put the dataset there or set 'path:' in {where} to its root"
    if not source or not autodownload:
        hint = "" if not source else " (autodownload is off)"
        raise DatasetError(f"{where}: dataset not found, missing val path {missing[0]}{hint}; {fix}")
    if is_download_code(source) and not allow_code:
        _refuse_code(source, where, missing[0])
    LOGGER.info(f"Dataset not found, missing {missing}; downloading with {where} 'download' ...")
    try:
        _download(str(source), Path(cfg["path"]), cfg)
    except Exception as e:  # network, disk, or the user's snippet: all become one actionable line
        raise DatasetError(f"{where}: dataset not found (missing {missing[0]}) and download failed "
                           f"({type(e).__name__}: {e}); {fix}") from None
    still = _missing_paths(cfg["val"])
    if still:
        raise DatasetError(f"{where}: download finished but val path {still[0]} is still missing; {fix}")


def _download(source: str, root: Path, cfg: dict) -> None:
    """A URL to a .zip/.tar archive is fetched and unpacked beside the root; other text runs as Python."""
    if not is_download_code(source):  # file:// lets mirrors and tests work offline
        root.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / Path(source.split("?")[0]).name
            with urllib.request.urlopen(source, timeout=60) as r, open(archive, "wb") as f:
                shutil.copyfileobj(r, f)
            extract_archive(archive, root.parent)
    else:
        exec(source, {"yaml": cfg})  # Ultralytics contract: download snippets receive the yaml dict


def extract_archive(archive: Path, dest: Path) -> None:
    """Unpack a zip or tar into dest, refusing members that would land outside it."""
    dest = dest.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            _check_members(z.namelist(), dest, archive)
            z.extractall(dest)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            _check_members(t.getnames(), dest, archive)
            t.extractall(dest, filter="data")
    else:
        raise DatasetError(f"{archive}: not a zip or tar archive")


def _check_members(names: list[str], dest: Path, archive: Path) -> None:
    """Guard against path traversal ('../' or absolute member names) in downloaded archives."""
    for name in names:
        target = (dest / name).resolve()
        if target != dest and dest not in target.parents:
            raise DatasetError(f"{archive}: member {name!r} would extract outside {dest}")


def summarize(cfg: dict[str, Any]) -> str:
    """One line for logs: where each split lives and how many classes."""
    splits = ", ".join(f"{k}={cfg[k]}" for k in SPLITS if cfg.get(k))
    return f"{cfg.get('yaml_file') or 'dataset'}: nc={cfg['nc']}, {splits}"
