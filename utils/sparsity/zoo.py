"""zoo: stubs resolved from a local mirror directory (the SparseZoo service is end-of-life; teams host the files).

Mirror layout: $YOLOV5_SPARSE_ZOO (default ~/.cache/yolov5-sparse/zoo) / <stub without 'zoo:' and query> /
    recipe.md | recipe.yaml | recipes/recipe_<recipe_type>.md      (recipes)
    model.pt | training/model.pt | training/model.ckpt.pt           (weights; transfer stubs prefer model.ckpt.pt)
Only the mirror is consulted: no network call is made, so an unknown stub fails at once with where to put the files.
"""
from __future__ import annotations

import os
from pathlib import Path


class ZooError(FileNotFoundError):
    """A zoo: stub that is not in the mirror; the message names the stub and the folder to fill."""


def mirror_dir() -> Path:
    return Path(os.getenv("YOLOV5_SPARSE_ZOO", Path.home() / ".cache/yolov5-sparse/zoo")).expanduser()


def parse_stub(stub: str) -> tuple[str, dict[str, str]]:
    """'zoo:a/b?recipe_type=transfer_learn' -> ('a/b', {'recipe_type': 'transfer_learn'})."""
    body = stub[len("zoo:"):] if stub.startswith("zoo:") else stub
    path, _, query = body.partition("?")
    params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
    return path.strip("/"), params


def _first(folder: Path, names: list[str], stub: str, what: str) -> Path:
    for n in names:
        if (folder / n).is_file():
            return folder / n
    raise ZooError(f"{stub}: no {what} in the local zoo mirror. Put one of {names} in {folder} "
                   f"(mirror root: $YOLOV5_SPARSE_ZOO, now {mirror_dir()}); the SparseZoo service is end-of-life.")


def resolve_recipe(stub: str) -> Path:
    """Recipe file of a stub; ?recipe_type=X (or ?recipe=X) picks recipes/recipe_X.md first."""
    path, params = parse_stub(stub)
    kind = params.get("recipe_type") or params.get("recipe")
    names = ([f"recipes/recipe_{kind}.md", f"recipes/recipe_{kind}.yaml"] if kind else []) + [
        "recipe.md", "recipe.yaml", "recipes/recipe_original.md"]
    return _first(mirror_dir() / path, names, stub, "recipe")


def resolve_weights(stub: str) -> Path:
    """PyTorch checkpoint of a stub; transfer-learning stubs prefer the pre-QAT training/model.ckpt.pt."""
    path, params = parse_stub(stub)
    transfer = "transfer" in (params.get("recipe_type", "") + params.get("recipe", ""))
    names = (["training/model.ckpt.pt"] if transfer else []) + ["model.pt", "training/model.pt"]
    return _first(mirror_dir() / path, names, stub, "weights")
