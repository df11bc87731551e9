"""zoo: stubs (V1 and V2, ?recipe_type=transfer_learn) resolve from our mirror, from SparseZoo's cache layout and
through sparsezoo's own Model class; with no network they fail fast, naming the stub and the mirror folder to fill.

The mirror is built from files this project wrote: yolov5n pruned one-shot to 50% and saved with save_checkpoint
(with the recipe that holds its sparsity), the dense yolov5n re-saved, and the ONNX export of the pruned one.
"""
from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from utils.checkpoint import CheckpointError, load_model, save_checkpoint
from utils.sparsity import zoo
from utils.sparsity.measure import global_sparsity
from utils.sparsity.recipes import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]
V1 = "zoo:cv/detection/yolov5-n/pytorch/ultralytics/coco128/pruned50-none"
V2 = "zoo:yolov5-n-coco128-pruned50"
TL = "?recipe_type=transfer_learn"
ORIGINAL = """---
num_epochs: 2
modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: eval(num_epochs)
  - !GMPruningModifier
    init_sparsity: 0.05
    final_sparsity: 0.5
    start_epoch: 0
    end_epoch: 1
    update_frequency: 0.5
    params: __ALL_PRUNABLE__
---
# yolov5n pruned50 (original recipe)
"""
TRANSFER = """---
num_epochs: 1
modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: eval(num_epochs)
  - !SetLearningRateModifier
    start_epoch: 0
    learning_rate: 0.001
  - !ConstantPruningModifier
    start_epoch: 0
    params: __ALL_PRUNABLE__
---
# yolov5n pruned50 (sparse transfer learning)
"""


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, yolov5n_pt: Path) -> dict[str, Path]:
    """Pruned (model.ckpt.pt) and dense (model.pt) checkpoints, the pruned ONNX, and both recipe cards."""
    from utils.export import export_weights
    from utils.sparsity.oneshot import prune_oneshot
    tmp = tmp_path_factory.mktemp("zoo_files")
    files = {"original": tmp / "recipe.md", "transfer": tmp / "recipe_transfer_learn.md"}
    files["original"].write_text(ORIGINAL)
    files["transfer"].write_text(TRANSFER)
    model = load_model(yolov5n_pt)
    save_checkpoint(tmp / "dense.pt", model, epoch=-1)
    prune_oneshot(model, 0.5, "layerwise")
    recipe = str(load_recipe(files["original"]).manager)
    save_checkpoint(tmp / "pruned.pt", model, recipe=recipe, recipe_epoch=math.inf)
    onnx = export_weights(tmp / "pruned.pt", ("onnx",), 64, verify=False, log=lambda *a: None)["files"][0]
    return {**files, "dense": tmp / "dense.pt", "pruned": tmp / "pruned.pt", "onnx": onnx}


@pytest.fixture()
def no_service(monkeypatch, tmp_path: Path) -> Path:
    """Empty mirror and cache, no service: only what a test puts there can resolve."""
    monkeypatch.setenv("YOLOV5_SPARSE_ZOO", str(tmp_path / "mirror"))
    monkeypatch.setenv("SPARSEZOO_MODELS_PATH", str(tmp_path / "cache"))
    monkeypatch.setenv("YOLOV5_SPARSE_ZOO_OFFLINE", "1")
    return tmp_path


def _publish(stub: str, files: dict[str, Path], root: Path | None = None) -> Path:
    return zoo.add_to_mirror(stub, weights=files["dense"], recipe=files["original"], transfer_weights=files["pruned"],
                             transfer_recipe=files["transfer"], onnx=files["onnx"], root=root)


# ------------------------------------------------------------------------------------------------ parsing
def test_stub_forms() -> None:
    path, params = zoo.parse_stub(V1 + TL)
    assert params == {"recipe_type": "transfer_learn"}
    fields = zoo.v1_fields(path)
    assert fields["architecture"] == "yolov5" and fields["sub_architecture"] == "n"
    assert fields["dataset"] == "coco128" and fields["sparse_tag"] == "pruned50-none"
    assert zoo.v1_fields(zoo.parse_stub(V2)[0]) is None and zoo.check_stub(V2) == "yolov5-n-coco128-pruned50"
    for bad in ("zoo:", "zoo:yolov5", "zoo:cv/detection/yolov5-s"):
        with pytest.raises(zoo.ZooError, match="V1 form.*V2 form"):
            zoo.check_stub(bad)


# --------------------------------------------------------------------------------------------- the mirror
@pytest.mark.parametrize("stub", [V1, V2])
def test_mirror_resolves_both_forms(stub: str, model_files: dict, no_service: Path) -> None:
    folder = _publish(stub, model_files)
    assert folder == no_service / "mirror" / zoo.parse_stub(stub)[0]
    assert zoo.resolve_weights(stub) == folder / "training/model.pt"
    assert zoo.resolve_weights(stub + TL) == folder / "training/model.ckpt.pt"  # transfer: the pre-QAT checkpoint
    assert zoo.resolve_weights(stub, "onnx") == folder / "model.onnx"
    assert zoo.resolve_recipe(stub) == folder / "recipe.md"
    assert zoo.resolve_recipe(stub + TL) == folder / "recipe/recipe_transfer_learn.md"
    assert load_recipe(stub + TL).has("constant_pruning")
    assert load_recipe(stub).has("gradual_pruning")
    assert global_sparsity(load_model(zoo.weights_path(stub + TL))) == pytest.approx(0.5, abs=0.01)  # scripts resolve stubs first
    assert global_sparsity(load_model(zoo.weights_path(stub))) < 0.01


def test_missing_recipe_type_is_not_replaced_by_another(model_files: dict, no_service: Path) -> None:
    _publish(V2, model_files)
    with pytest.raises(RecipeError, match=r"zoo:yolov5-n-coco128-pruned50\?recipe_type=distill: no recipe found"
                                          r".*recipe/recipe_distill\.md"):
        load_recipe(V2 + "?recipe_type=distill")


# ------------------------------------------------------------------------------------ SparseZoo's cache
def _sparsezoo_card(folder: Path) -> None:
    """A model card as SparseZoo writes it: the V1 fields, no stub of ours."""
    card = {"domain": "cv", "sub_domain": "detection", "architecture": "yolov5", "sub_architecture": "n",
            "framework": "pytorch", "repo": "ultralytics", "source_dataset": "coco128", "train_dataset": "coco128",
            "sparse_tag": "pruned50-none", "display_name": "YOLOv5n pruned50"}
    (folder / "model.md").write_text("---\n" + yaml.safe_dump(card) + "---\n# YOLOv5n\n")


def test_sparsezoo_cache_layouts(model_files: dict, no_service: Path) -> None:
    cache = no_service / "cache"
    v2 = _publish(V2, model_files, root=cache / "neuralmagic")  # <SPARSEZOO_MODELS_PATH>/<namespace>/<V2 name>
    assert zoo.resolve_weights(V2 + TL) == v2 / "training/model.ckpt.pt"
    by_id = cache / "eb977dae-2454-471b-9870-4cf38074acf0"  # V1 downloads live in a folder named by model id
    _publish(V1, model_files, root=no_service / "tmp")
    (no_service / "tmp" / zoo.parse_stub(V1)[0]).rename(by_id)
    _sparsezoo_card(by_id)
    assert zoo.resolve_weights(V1 + TL) == by_id / "training/model.ckpt.pt"
    assert zoo.resolve_recipe(V1 + TL) == by_id / "recipe/recipe_transfer_learn.md"
    other = V1.replace("pruned50-none", "pruned75-none")
    with pytest.raises(zoo.ZooError, match="pruned75-none: no weights found"):
        zoo.resolve_weights(other)  # a card of another model does not match
    mirror = _publish(V2, model_files)  # our mirror comes first
    assert zoo.resolve_weights(V2) == mirror / "training/model.pt"


def test_through_sparsezoo_model_class(model_files: dict, no_service: Path, monkeypatch) -> None:
    """The service path: sparsezoo.Model's own file objects (here over a local folder, since there is no network)."""
    from sparsezoo import Model
    folder = _publish(V2, model_files, root=no_service / "service")
    listener = socket.create_server(("127.0.0.1", 0))
    monkeypatch.delenv("YOLOV5_SPARSE_ZOO_OFFLINE")
    monkeypatch.setattr(zoo, "service_endpoint", lambda: listener.getsockname()[:2])
    monkeypatch.setattr(zoo, "_service_model", lambda stub: Model(str(folder)))
    try:
        assert zoo.resolve_weights(V2 + TL) == folder / "training/model.ckpt.pt"
        assert zoo.resolve_weights(V2) == folder / "training/model.pt"
        assert zoo.resolve_weights(V2, "onnx") == folder / "model.onnx"
        assert zoo.resolve_recipe(V2 + TL) == folder / "recipe/recipe_transfer_learn.md"
    finally:
        listener.close()


# ------------------------------------------------------------------------------------------- no network
def test_hanging_service_fails_fast_and_names_stub(no_service: Path, monkeypatch) -> None:
    """A proxy that accepts and never answers: sparsezoo's requests would wait forever; the deadline ends it."""
    listener = socket.create_server(("127.0.0.1", 0))  # never accept()ed: connects succeed, nothing is answered
    host, port = listener.getsockname()[:2]
    monkeypatch.delenv("YOLOV5_SPARSE_ZOO_OFFLINE")
    monkeypatch.setenv("YOLOV5_SPARSE_ZOO_TIMEOUT", "2")
    monkeypatch.setenv("HTTPS_PROXY", f"http://{host}:{port}")
    monkeypatch.setenv("NO_PROXY", "")
    import sparsezoo  # noqa: F401  (import cost is not the network; keep it out of the measured call)
    try:
        t0 = time.monotonic()
        with pytest.raises(CheckpointError) as e:
            zoo.weights_path(V1 + TL)
        elapsed = time.monotonic() - t0
    finally:
        listener.close()
    msg = str(e.value)
    assert msg.startswith(f"--weights {V1 + TL}: no weights found")
    assert re.search(r"SparseZoo service: no answer within (2|1[.]\d+) s", msg)  # the deadline fired, not another error
    assert str(no_service / "mirror" / zoo.parse_stub(V1)[0]) in msg and "python -m utils.sparsity.zoo add" in msg
    assert elapsed < 10  # the bound for an offline command; without the deadline this never returns


def _script(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("script", ["train.py", "val.py", "detect.py", "export.py"])
def test_cli_offline_failure_names_stub(script: str, tmp_path: Path) -> None:
    """No network here: every script fails with one message naming the stub and the mirror folder to fill."""
    env = {"YOLOV5_SPARSE_ZOO": str(tmp_path / "mirror"), "SPARSEZOO_MODELS_PATH": str(tmp_path / "cache"),
           "YOLOV5_SPARSE_ZOO_TIMEOUT": "3"}
    args = [script, "--weights", V2 + TL] + (["--data", "data/coco128-local.yaml"] if script != "detect.py" else [])
    if script == "train.py":
        args += ["--project", str(tmp_path / "runs")]
    r = _script(args, env)
    assert r.returncode in (1, 2), r.stderr[-2000:]
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith(f"ERROR: --weights {V2 + TL}: no weights found") and "Traceback" not in r.stderr
    assert f"{tmp_path / 'mirror' / 'yolov5-n-coco128-pruned50'}/" in err and "training/model.ckpt.pt" in err
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------- scripts take stubs
def _data(tmp: Path, coco128_dir: Path, n: int) -> Path:
    images = sorted((coco128_dir / "images/train2017").glob("*.jpg"))[:n]
    (tmp / "images.txt").write_text("".join(f"{p}\n" for p in images))
    data = tmp / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(tmp), "train": str(tmp / "images.txt"), "val": str(tmp / "images.txt"),
                                    "names": (coco128_dir / "classes.txt").read_text().splitlines()}))
    return data


def test_val_detect_export_take_stubs(model_files: dict, no_service: Path, coco128_dir: Path, bus_jpg: Path) -> None:
    import detect
    import export
    import val
    folder = _publish(V1, model_files)
    data = _data(no_service, coco128_dir, 4)
    m = val.run(data=str(data), weights=V1 + TL, imgsz=64, batch_size=4, workers=0, plots=False,
                project=str(no_service / "val"))
    assert m["sparsity"] == pytest.approx(0.5, abs=0.01)  # the transfer stub's pre-QAT checkpoint, pruned
    m = val.run(data=str(data), weights=V1, engine="onnxruntime", imgsz=64, batch_size=1, workers=0, plots=False,
                project=str(no_service / "val"))
    assert m["engine"]["name"] == "onnxruntime" and m["images"] == 4  # ran the stub's model.onnx
    out = detect.run(weights=V1, source=str(bus_jpg), imgsz=64, project=str(no_service / "detect"))
    assert (out / bus_jpg.name).is_file()
    files = export.run(weights=V1 + TL, imgsz=[64])
    assert files[0] == folder / "training/model.ckpt.onnx"


@pytest.mark.slow
def test_train_sparse_transfer_from_stubs(model_files: dict, no_service: Path, coco128_dir: Path) -> None:
    """--weights and --recipe both as transfer stubs: the checkpoint's 50% is held through fine-tuning."""
    _publish(V2, model_files)
    args = ["train.py", "--weights", V2 + TL, "--recipe", V2 + TL, "--data", str(_data(no_service, coco128_dir, 8)),
            "--img", "64", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--noval", "--noplots",
            "--noautoanchor", "--project", str(no_service / "runs"), "--name", "tl"]
    r = _script(args, {k: os.environ[k] for k in ("YOLOV5_SPARSE_ZOO", "SPARSEZOO_MODELS_PATH",
                                                     "YOLOV5_SPARSE_ZOO_OFFLINE")})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "DENSE" not in r.stdout + r.stderr  # a sparse start: no transfer-on-dense warning
    last = no_service / "runs/tl/weights/last.pt"
    model = load_model(last)
    assert global_sparsity(model) == pytest.approx(0.5, abs=0.01)
    assert "ConstantPruningModifier" in model.checkpoint_meta["recipe"]
    assert "GMPruningModifier" in model.checkpoint_meta["recipe"]  # composed after the stub checkpoint's own recipe
