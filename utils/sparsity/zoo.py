"""zoo: stubs -> local files: our mirror, then SparseZoo's download cache, then (time-bounded) the SparseZoo service.

Stub forms (both with optional `?recipe_type=transfer_learn`, `?recipe=...` or `?checkpoint=preqat`):
    V1  zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/pruned_quant-aggressive_94
    V2  zoo:yolov5-s-coco-pruned75_quantized
Where a stub is looked up, in order:
    1. our mirror  $YOLOV5_SPARSE_ZOO (default ~/.cache/yolov5-sparse/zoo) / <stub path>  (V1: nested folders)
    2. SparseZoo's cache  $SPARSEZOO_MODELS_PATH (default ~/.cache/sparsezoo): <name>, <namespace>/<name>, or a folder
       named by model id whose model.md card describes the stub (that is how sparsezoo stores V1 downloads)
    3. sparsezoo.Model(stub), which asks the (end-of-life) service and downloads into its cache. Its requests have
       no timeout, so a reachability probe and then the lookup run in threads within one deadline
       ($YOLOV5_SPARSE_ZOO_TIMEOUT, default 4 s); YOLOV5_SPARSE_ZOO_OFFLINE=1 skips the service.
A model folder has SparseZoo's layout (`python -m utils.sparsity.zoo add` writes one):
    model.md  recipe/recipe_original.md  recipe/recipe_transfer_learn.md  (recipe.md or recipe_<type>.md at the top too)
    training/model.pt  training/model.ckpt.pt (pre-QAT, for transfer learning)  model.onnx | deployment/model.onnx
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlparse

import yaml

from utils.checkpoint import CheckpointError
from utils.engines import reads_exported_files

V1_FIELDS = ("domain", "sub_domain", "architecture", "sub_architecture", "framework", "repo", "dataset",
             "training_scheme", "sparse_tag")
CARD_ALIASES = {"dataset": ("dataset", "source_dataset", "train_dataset")}
KINDS = ("recipe", "weights", "onnx")
T = TypeVar("T")


class ZooError(FileNotFoundError):
    """A zoo: stub that could not be resolved; the message names the stub and where to put its files."""


# ------------------------------------------------------------------------------------------------- stubs
def parse_stub(stub: str) -> tuple[str, dict[str, str]]:
    """'zoo:a/b?recipe_type=transfer_learn' -> ('a/b', {'recipe_type': 'transfer_learn'})."""
    body = stub[len("zoo:"):] if stub.startswith("zoo:") else stub
    path, _, query = body.partition("?")
    params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
    return path.strip("/"), params


def v1_fields(path: str) -> dict[str, str] | None:
    """Named parts of a V1 stub path (domain/sub_domain/arch[-sub]/framework/repo/dataset[-scheme]/sparse_tag)."""
    parts = path.split("/")
    if len(parts) != 7 or not all(parts):
        return None
    arch, _, sub = parts[2].partition("-")
    data, _, scheme = parts[5].partition("-")
    values = (parts[0], parts[1], arch, sub, parts[3], parts[4], data, scheme, parts[6])
    return dict(zip(V1_FIELDS, values))


def check_stub(stub: str) -> str:
    """The stub's path; a malformed stub fails with both accepted forms."""
    path, _ = parse_stub(stub)
    if v1_fields(path) is None and ("/" in path or path.count("-") < 2 or not path):
        raise ZooError(f"{stub}: not a SparseZoo stub. Use the V1 form zoo:DOMAIN/SUB_DOMAIN/ARCH-SUB/FRAMEWORK/REPO/"
                       f"DATASET/SPARSE_TAG (e.g. zoo:cv/detection/yolov5-s/pytorch/ultralytics/coco/"
                       f"pruned_quant-aggressive_94) or the V2 form zoo:ARCH-SUB-DATASET-SPARSE_TAG "
                       f"(e.g. zoo:yolov5-s-coco-pruned75_quantized)")
    return path


def recipe_type(params: dict[str, str]) -> str | None:
    return params.get("recipe_type") or params.get("recipe")


def wants_transfer(params: dict[str, str]) -> bool:
    """Transfer stubs (and ?checkpoint=preqat) want the pre-QAT checkpoint, as SparseML's own helpers pick it."""
    return "transfer" in (recipe_type(params) or "") or params.get("checkpoint") == "preqat"


# ------------------------------------------------------------------------------------------ model folders
def mirror_dir() -> Path:
    return Path(os.getenv("YOLOV5_SPARSE_ZOO") or Path.home() / ".cache/yolov5-sparse/zoo").expanduser()


def sparsezoo_cache_dir() -> Path:
    """SparseZoo's SAVE_DIR, read now (sparsezoo itself reads it once, at import)."""
    return Path(os.getenv("SPARSEZOO_MODELS_PATH") or Path.home() / ".cache/sparsezoo").expanduser()


def front_matter(text: str) -> str:
    """YAML part of a Markdown recipe/model card (between the first two `---` lines); plain YAML is returned unchanged."""
    head = re.sub(r"^\s*<!--.*?-->", "", text, count=1, flags=re.S)  # licence comments precede the front matter
    lines = head.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.strip() == "---"]
    if len(starts) >= 2 and all(not ln.strip() for ln in lines[: starts[0]]):
        return "\n".join(lines[starts[0] + 1: starts[1]]) + "\n"
    return text


def _card(folder: Path) -> dict:
    """YAML front matter of a model folder's model.md card ({} when missing or unreadable)."""
    try:
        data = yaml.safe_load(front_matter((folder / "model.md").read_text(errors="ignore")))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def card_matches(card: dict, path: str) -> bool:
    """True when a model card describes this stub: its `stub` field, or every V1 field the card states agrees."""
    if card.get("stub") and parse_stub(str(card["stub"]))[0] == path:
        return True
    fields = v1_fields(path)
    if fields is None:
        return str(card.get("repo_name", "")) == path
    stated = 0
    for name, value in fields.items():
        for key in CARD_ALIASES.get(name, (name,)):
            if key in card and str(card[key] or "") != value:
                return False
            stated += key in card
    return "architecture" in card and "sparse_tag" in card and stated >= 4


def cache_candidates(path: str) -> list[Path]:
    """Folders of SparseZoo's cache that hold this stub (existing ones only)."""
    root = sparsezoo_cache_dir()
    if not root.is_dir():
        return []
    name = path.replace("/", os.sep)
    direct = [root / name] + sorted(p / name for p in root.iterdir() if p.is_dir())
    found = [d for d in direct if d.is_dir()]
    cards = sorted(root.glob("*/model.md")) + sorted(root.glob("*/*/model.md"))
    found += [c.parent for c in cards if c.parent not in found and card_matches(_card(c.parent), path)]
    return found


def _first(folder: Path, names: list[str]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def pick_recipe(folder: Path, kind: str | None) -> Path | None:
    """recipe_<kind>*.md|yaml (prefix match, as sparsezoo) or the default recipe of a model folder."""
    for sub in ("recipe", "", "recipes"):
        d = folder / sub if sub else folder
        if not d.is_dir():
            continue
        if kind:
            hits = sorted(p for p in d.glob(f"recipe_{kind}*") if p.suffix in (".md", ".yaml", ".yml"))
            if hits:
                return hits[0]
        elif found := _first(d, ["recipe.md", "recipe.yaml", "recipe_original.md", "recipe_original.yaml"]):
            return found
    return None


def pick_file(folder: Path, what: str, params: dict[str, str]) -> Path | None:
    """The file of a model folder that a stub asks for (weights, recipe or onnx)."""
    if what == "recipe":
        return pick_recipe(folder, recipe_type(params))
    if what == "onnx":
        return _first(folder, ["model.onnx", "deployment/model.onnx"])
    names = [f"{d}model.{s}" for d in ("training/", "") for s in ("pt", "pth")]
    if wants_transfer(params):
        names = [f"{d}model.ckpt.{s}" for d in ("training/", "") for s in ("pt", "pth")] + names
    return _first(folder, names)


def expected_files(what: str, params: dict[str, str]) -> str:
    """What to put in a mirror folder for this request (for error messages)."""
    if what == "recipe":
        kind = recipe_type(params)
        return f"recipe/recipe_{kind}.md" if kind else "recipe.md (or recipe/recipe_original.md)"
    if what == "onnx":
        return "model.onnx"
    return "training/model.ckpt.pt (pre-QAT) or training/model.pt" if wants_transfer(params) else "training/model.pt"


# ----------------------------------------------------------------------------------------- the service
def _service_model(stub: str):
    """sparsezoo.Model for a stub (network: a GraphQL query for the file list). Replaced in tests."""
    from sparsezoo import Model
    return Model(stub)


def _service_file(model, what: str, params: dict[str, str]) -> Path:
    """Download (or reuse from sparsezoo's cache) the requested file of a sparsezoo.Model."""
    if what == "onnx":
        return Path(model.onnx_model.path)
    if what == "recipe":
        return _service_recipe(model, recipe_type(params))
    names = (["model.ckpt.pt"] if wants_transfer(params) else []) + ["model.pt"]
    training = model.training.default
    file = next((f for f in (training.get_file(n) for n in names) if f is not None), None)
    if file is None:
        raise FileNotFoundError(f"the model has no {' or '.join(names)} in training/")
    return Path(file.path)


def _service_recipe(model, kind: str | None) -> Path:
    """recipe_<kind>* of a sparsezoo.Model (never silently another recipe), else its default recipe."""
    entries = list(model.recipes.recipes)  # files one by one (a stub's model) or a recipe/ folder (one read from disk)
    named = [f for f in entries if kind and f.name.startswith(f"recipe_{kind}")]
    if named:
        return Path(named[0].path)
    folders = [Path(f.path) for f in entries if "." not in f.name]  # .path downloads: folders only
    found = next((p for p in (pick_recipe(d.parent, kind) for d in folders if d.is_dir()) if p), None)
    if found:
        return found
    if kind:
        raise FileNotFoundError(f"the model has no recipe_{kind} recipe")
    return Path(model.recipes.default.path)


def service_endpoint() -> tuple[str, int]:
    """Host and port the SparseZoo client connects to first: its API ($SPARSEZOO_API_URL) or the proxy before it."""
    url = urlparse(os.getenv("SPARSEZOO_API_URL") or "https://api.neuralmagic.com")
    proxy = None if urllib.request.proxy_bypass(url.hostname or "") else urllib.request.getproxies().get(url.scheme)
    target = urlparse(proxy if "://" in proxy else f"http://{proxy}") if proxy else url
    return target.hostname or "", target.port or (443 if target.scheme == "https" else 80)


def _reason(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    for cause in ("NameResolutionError", "Failed to resolve", "Connection refused", "Network is unreachable"):
        if cause in text:
            return f"{type(err).__name__} ({cause})"
    return f"{type(err).__name__}: {text[:160]}"


def within(seconds: float, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) in a daemon thread; ZooError when it has not returned in time (requests has no timeout there)."""
    box: dict = {}

    def work() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001  (handed to the caller)
            box["error"] = e

    t = threading.Thread(target=work, name="sparsezoo-lookup", daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise ZooError(f"no answer within {seconds:.3g} s (offline?)")
    if "error" in box:
        raise ZooError(_reason(box["error"]))
    return box["value"]


def from_service(stub: str, what: str, params: dict[str, str]) -> Path:
    """Ask the SparseZoo service (reachability probe, then the file list) within deadlines; failures -> ZooError."""
    if os.getenv("YOLOV5_SPARSE_ZOO_OFFLINE", "") not in ("", "0"):
        raise ZooError("not asked (YOLOV5_SPARSE_ZOO_OFFLINE is set)")
    timeout = float(os.getenv("YOLOV5_SPARSE_ZOO_TIMEOUT", "4"))  # one budget for the probe and the lookup
    host, port = service_endpoint()
    start = time.monotonic()
    try:  # getaddrinfo ignores socket timeouts: the thread deadline bounds a hanging DNS too
        within(timeout, lambda: socket.create_connection((host, port), timeout=timeout).close())
    except ZooError as e:
        raise ZooError(f"cannot reach {host}:{port}: {e}") from None
    spent = time.monotonic() - start
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
    try:
        import sparsezoo  # noqa: F401  (outside the budget: importing is not the network)
    except ImportError as e:
        raise ZooError(f"sparsezoo is not installed ({e})") from None
    model = within(max(timeout - spent, 0.5), _service_model, stub)
    return within(float(os.getenv("YOLOV5_SPARSE_ZOO_DOWNLOAD_TIMEOUT", "3600")), _service_file, model, what, params)


# ----------------------------------------------------------------------------------------------- resolve
def resolve(stub: str, what: str = "weights") -> Path:
    """Local path of a stub's recipe, weights (.pt) or onnx: mirror, then SparseZoo's cache, then its service."""
    if what not in KINDS:
        raise ValueError(f"what must be one of {KINDS}, got {what!r}")
    path = check_stub(stub)
    _, params = parse_stub(stub)
    mirror = mirror_dir() / path
    for folder in [mirror] + cache_candidates(path):
        if found := pick_file(folder, what, params):
            return found
    try:
        return from_service(stub, what, params)
    except ZooError as e:
        reason = str(e)
    raise ZooError(
        f"{stub}: no {what} found. Looked in our mirror {mirror} ($YOLOV5_SPARSE_ZOO) and SparseZoo's cache "
        f"{sparsezoo_cache_dir()} ($SPARSEZOO_MODELS_PATH); SparseZoo service: {reason}. The service is end-of-life: "
        f"host the files yourself by putting {expected_files(what, params)} in {mirror}/, e.g. "
        f"`python -m utils.sparsity.zoo add '{stub.split('?')[0]}' {_add_flag(what, params)}`.")


def _add_flag(what: str, params: dict[str, str]) -> str:
    """The `zoo add` option that would have satisfied this request."""
    if what == "onnx":
        return "--onnx model.onnx"
    if what == "recipe":
        return "--transfer-recipe recipe.md" if "transfer" in (recipe_type(params) or "") else "--recipe recipe.md"
    return "--transfer-weights best_pruned.pt" if wants_transfer(params) else "--weights best.pt"


def resolve_recipe(stub: str) -> Path:
    return resolve(stub, "recipe")


def resolve_weights(stub: str, what: str = "weights") -> Path:
    return resolve(stub, what)


def weights_path(weights: str | Path | None, engine: str | None = None) -> str:
    """--weights as a local path: a zoo: stub becomes its mirror/SparseZoo file (.onnx for engines that run exported
    files), anything else is returned as is.

    Every script calls this first (checkpoint I/O never resolves stubs); a stub that cannot be found raises
    CheckpointError naming it and the mirror folder to fill.
    """
    if weights is None or not str(weights).startswith("zoo:"):
        return "" if weights is None else str(weights)
    what = "onnx" if engine and reads_exported_files(engine) else "weights"
    try:
        return str(resolve(str(weights), what))
    except ZooError as e:
        raise CheckpointError(f"--weights {e}") from None


# ------------------------------------------------------------------------------------------ the mirror
def add_to_mirror(stub: str, weights: str | Path | None = None, recipe: str | Path | None = None,
                  transfer_weights: str | Path | None = None, transfer_recipe: str | Path | None = None,
                  onnx: str | Path | None = None, root: str | Path | None = None) -> Path:
    """Copy files into a mirror (or SparseZoo-cache-style) folder for a stub, in SparseZoo's layout."""
    path = check_stub(stub)
    folder = Path(root or mirror_dir()) / path
    files = {"training/model.pt": weights, "training/model.ckpt.pt": transfer_weights, "recipe.md": recipe,
             "recipe/recipe_transfer_learn.md": transfer_recipe, "model.onnx": onnx}
    for name, src in files.items():
        if src:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, folder / name)
    card = {"stub": f"zoo:{path}", **{k: v for k, v in (v1_fields(path) or {"repo_name": path}).items() if v}}
    (folder / "model.md").write_text("---\n" + yaml.safe_dump(card, sort_keys=False) + "---\n\nAdded by "
                                     "utils/sparsity/zoo.py for a self-hosted mirror.\n")
    return folder


def main(argv: list[str] | None = None) -> None:
    """`python -m utils.sparsity.zoo add STUB --weights best.pt --recipe r.md` | `... resolve STUB [--what onnx]`."""
    p = argparse.ArgumentParser(prog="python -m utils.sparsity.zoo", description=main.__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    add = sub.add_parser("add", help="put files in the mirror for a stub")
    add.add_argument("stub")
    for flag in ("--weights", "--recipe", "--transfer-weights", "--transfer-recipe", "--onnx", "--root"):
        add.add_argument(flag, default=None)
    res = sub.add_parser("resolve", help="print the local file of a stub")
    res.add_argument("stub")
    res.add_argument("--what", choices=KINDS, default="weights")
    opt = p.parse_args(argv)
    if opt.cmd == "add":
        print(add_to_mirror(opt.stub, opt.weights, opt.recipe, opt.transfer_weights, opt.transfer_recipe, opt.onnx,
                            opt.root))
    else:
        print(resolve(opt.stub, opt.what))


if __name__ == "__main__":
    from utils.cli import exit_on_user_error

    with exit_on_user_error():
        main()
