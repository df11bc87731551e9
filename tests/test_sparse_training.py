"""Recipe-driven training: a tiny GMP run reaches its target, checkpoints carry the recipe, resume is exact."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from utils.sparsity.manager import SparsificationCallback, apply_recipe_structure, remap_mask_keys
from utils.sparsity.measure import global_sparsity
from utils.sparsity.recipes import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]

# 64 images at batch 32: 2 batches, accumulate 2 (nominal batch 64) -> one optimizer step per epoch, at epoch + 0.5
GMP = """
num_epochs: 3
modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: eval(num_epochs)
  - !SetLearningRateModifier
    start_epoch: 0
    learning_rate: 0.002
  - !GMPruningModifier
    init_sparsity: 0.2
    final_sparsity: 0.5
    start_epoch: 0
    end_epoch: 2
    update_frequency: 1.0
    mask_type: unstructured
    params: ["re:model[.][1-9][0-9]*[.].*conv[.]weight"]
"""
CONSTANT = """
modifiers:
  - !ConstantPruningModifier
    start_epoch: 0
    params: __ALL_PRUNABLE__
"""
QAT = """
modifiers:
  - !QuantizationModifier
    start_epoch: 0
"""

KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {root!r})
import train
from utils.callbacks import Callback

class KillAfterEpoch(Callback):
    def on_train_epoch_start(self, trainer):
        if trainer.epoch == {k} + 1:  # last.pt of epoch k is on disk, pruning is half-way
            os.kill(os.getpid(), signal.SIGKILL)

train.main(train.parse_opt(), callbacks=[KillAfterEpoch()])
"""


def _data(tmp: Path, coco128_dir: Path, n: int = 64) -> Path:
    images = sorted((coco128_dir / "images/train2017").glob("*.jpg"))[:n]
    (tmp / "images.txt").write_text("".join(f"{p}\n" for p in images))
    names = (coco128_dir / "classes.txt").read_text().splitlines()
    data = tmp / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(tmp), "train": str(tmp / "images.txt"),
                                    "val": str(tmp / "images.txt"), "names": names}))
    return data


def _train(args: list[str], script: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(script or ROOT / "train.py"), *args]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def _rows(csv: Path) -> list[dict]:
    lines = [[c.strip() for c in ln.split(",")] for ln in csv.read_text().splitlines() if ln.strip()]
    return [dict(zip(lines[0], map(float, row))) for row in lines[1:]]


@pytest.fixture(scope="module")
def gmp_run(tmp_path_factory, coco128_dir: Path, yolov5n_pt: Path) -> dict:
    """One uninterrupted 3-epoch GMP run; the resume test compares against it."""
    tmp = tmp_path_factory.mktemp("gmp")
    recipe = tmp / "gmp.yaml"
    recipe.write_text(GMP)
    args = ["--weights", str(yolov5n_pt), "--data", str(_data(tmp, coco128_dir)), "--img", "128", "--epochs", "9",
            "--batch-size", "32", "--workers", "0", "--device", "cpu", "--project", str(tmp / "runs"), "--noval",
            "--noplots", "--noautoanchor", "--seed", "1", "--recipe", str(recipe)]
    r = _train(args + ["--name", "full"])
    return {"tmp": tmp, "args": args, "out": tmp / "runs/full", "log": r.stdout + r.stderr}


@pytest.mark.slow
def test_gmp_reaches_target_and_checkpoint_keeps_recipe(gmp_run: dict) -> None:
    from utils.checkpoint import load_model
    out, log = gmp_run["out"], gmp_run["log"]
    rows = _rows(out / "results.csv")
    assert [r["epoch"] for r in rows] == [0, 1, 2]  # recipe's 3 epochs override --epochs 9
    sp = [r["sparsity/global"] for r in rows]
    assert 0.15 < sp[0] < sp[1] < sp[2]  # gradual: init 0.2 of the pruned layers, rising
    assert [r["x/phase"] for r in rows] == [1, 1, 2]  # pruning, pruning, pruned
    assert all(r["x/lr1"] == pytest.approx(0.002) for r in rows)  # SetLearningRateModifier replaced the scheduler
    assert "phase pruned, global sparsity" in log and "overrides --epochs" in log
    model = load_model(out / "weights/last.pt")
    layers = {n: p for n, p in model.named_parameters() if n.endswith("conv.weight") and not n.startswith("model.0.")}
    assert all(float((p == 0).float().mean()) == pytest.approx(0.5, abs=0.01) for p in layers.values())
    assert float((model.model[0].conv.weight == 0).float().mean()) < 0.01  # the stem was not listed
    assert global_sparsity(model) == pytest.approx(sp[2], abs=1e-4)
    ckpt = torch.load(out / "weights/last.pt", map_location="cpu", weights_only=True)
    assert "GMPruningModifier" in ckpt["recipe"] and "final_sparsity: 0.5" in ckpt["recipe"]
    assert (out / "weights/best_pruned.pt").is_file()
    pruned = torch.load(out / "weights/best_pruned.pt", map_location="cpu", weights_only=True)
    assert "optimizer" not in pruned and pruned["recipe"] == ckpt["recipe"]


@pytest.mark.slow
def test_resume_mid_pruning_equals_uninterrupted(gmp_run: dict) -> None:
    tmp = gmp_run["tmp"]
    script = tmp / "kill.py"
    script.write_text(KILL_SCRIPT.format(root=str(ROOT), k=0))
    killed = _train(gmp_run["args"] + ["--name", "cut"], script=script, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    cut = tmp / "runs/cut"
    _train(["--resume", str(cut / "weights/last.pt")])
    full, resumed = _rows(gmp_run["out"] / "results.csv"), _rows(cut / "results.csv")
    assert [r["sparsity/global"] for r in resumed] == [r["sparsity/global"] for r in full]
    assert resumed == full
    a = torch.load(gmp_run["out"] / "weights/last.pt", weights_only=True)["model"]
    b = torch.load(cut / "weights/last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_broken_recipe_fails_before_training(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GMP.replace("final_sparsity: 0.5", "final_sparsity: 0.5\n    finall: 1"))
    r = _train(["--weights", "", "--cfg", "yolov5n.yaml", "--data", "data/coco128-local.yaml", "--recipe", str(bad),
                "--project", str(tmp_path / "runs")], check=False)
    assert r.returncode == 1
    assert f"recipe {bad}" in r.stderr and "GMPruningModifier" in r.stderr and "field 'finall'" in r.stderr
    assert not (tmp_path / "runs").exists()  # nothing built, no run folder


# ------------------------------------------------------------------------------------------ unit checks
def test_transfer_recipe_on_dense_model_warns(monkeypatch) -> None:
    from utils.sparsity import manager as mgr
    said = []
    monkeypatch.setattr(mgr.LOGGER, "warning", lambda msg, *a, **k: said.append(msg))
    cb = SparsificationCallback(CONSTANT)
    cb.start_sparsity = 0.001
    cb._check_state(load_recipe(CONSTANT))
    assert said and "ConstantPruningModifier" in said[0] and "0.1% sparse" in said[0] and "DENSE" in said[0]
    said.clear()
    cb.start_sparsity = 0.6  # a sparse start without any pruning modifier: the masks will not be kept
    cb._check_state(load_recipe(GMP.split("  - !GMPruningModifier")[0]))
    assert said and "60.0%" in said[0] and "NOT be kept" in said[0]


def test_no_recipe_on_sparse_checkpoint_warns(monkeypatch) -> None:
    """For train.py without --recipe (wired by the lead): a sparse start is named, a dense one is not."""
    from types import SimpleNamespace

    from models.yolo import DetectionModel
    from utils.sparsity import manager as mgr
    from utils.sparsity.oneshot import prune_oneshot
    said = []
    monkeypatch.setattr(mgr.LOGGER, "warning", lambda msg, *a, **k: said.append(msg))
    model = DetectionModel("models/yolov5n.yaml")
    trainer = SimpleNamespace(model=model, opt=SimpleNamespace(weights="best_pruned.pt"))
    mgr.SparseStartWarning().on_train_start(trainer)
    assert not said
    prune_oneshot(model, 0.3, "layerwise")
    mgr.SparseStartWarning().on_train_start(trainer)
    assert said and "best_pruned.pt is 30.0% sparse" in said[0] and "NOT be kept" in said[0]


def test_qat_twice_is_refused() -> None:
    cb = SparsificationCallback(QAT)
    cb.base_recipe = QAT
    with pytest.raises(RecipeError, match="recipe <recipe text>: QuantizationModifier.*more than once"):
        cb._refuse_qat_twice()
    cb.base_recipe = CONSTANT  # a pruned, not quantized, checkpoint: QAT is welcome
    cb._refuse_qat_twice()


def test_mask_keys_follow_qat_wrappers() -> None:
    from models.yolo import DetectionModel
    model = DetectionModel("models/yolov5n.yaml")
    state = {"GMPruningModifier_0": {"model.2.cv1.conv.weight.sparsity_mask": 1, "other": 2}}
    assert remap_mask_keys(state, model) == state  # names still fit: unchanged
    apply_recipe_structure(model, QAT)  # wraps convs: model.2.cv1.conv.module.weight
    names = {n for n, _ in model.named_parameters()}
    fixed = remap_mask_keys(state, model)["GMPruningModifier_0"]
    key = next(k for k in fixed if k.endswith("sparsity_mask"))
    assert key[: -len(".sparsity_mask")] in names and fixed["other"] == 2


def test_replay_holds_qat_actions_the_checkpoint_had_not_reached() -> None:
    """Replaying at the resume epoch must not freeze BN early; saved flags pair up even though QAT changed ids."""
    from models.yolo import DetectionModel
    from utils.compat import import_sparseml
    from utils.sparsity.manager import held_qat_actions, saved_schedule, schedule_state
    recipe = QAT.replace("start_epoch: 0", "start_epoch: 0\n    freeze_bn_stats_epoch: 0.5")
    frozen = lambda m: [x.freeze_bn for x in m.modules() if hasattr(x, "freeze_bn")]  # noqa: E731
    first, model = import_sparseml().from_yaml(recipe), DetectionModel("models/yolov5n.yaml").train()
    first.apply_structure(model, epoch=0.25)  # QAT on, BN not yet frozen: what a checkpoint at 0.25 holds
    saved = schedule_state(first)
    assert list(saved.values()) == [{"_qat_enabled": True, "_bn_stats_frozen": False,
                                     "_quantization_observer_disabled": False}]
    again, model = import_sparseml().from_yaml(recipe), DetectionModel("models/yolov5n.yaml").train()
    assert next(iter(saved)) not in {m.identifier() for m in again.iter_modifiers()}
    assert saved_schedule(again, saved)[0][1]["_qat_enabled"] is True  # paired by type and order
    with held_qat_actions(again, saved):
        again.apply_structure(model, epoch=0.9999)  # the resume replay point, past freeze_bn_stats_epoch
    assert frozen(model) and not any(frozen(model))
    assert next(again.iter_modifiers())._bn_stats_frozen is False  # the next update freezes on schedule
    again2, model2 = import_sparseml().from_yaml(recipe), DetectionModel("models/yolov5n.yaml").train()
    again2.apply_structure(model2, epoch=0.9999)
    assert all(frozen(model2))  # without the hold it would have frozen now


QAT_RUN = GMP.replace("num_epochs: 3\n", "num_epochs: 4\n").replace("end_epoch: 2\n", "end_epoch: 1\n") + """
  - !QuantizationModifier
    start_epoch: 2
    submodules: [model]
    custom_quantizable_module_types: ['SiLU']
    exclude_module_types: ['SiLU']
    quantize_conv_activations: False
    freeze_bn_stats_epoch: 2.6
    disable_quantization_observer_epoch: 3.2
"""  # prune in epoch 0, hold in 1, QAT in 2-3: BN frozen at the step of 3.5 (first update >= 2.6), observers off too


def _short_args(tmp: Path, coco128_dir: Path, weights: Path, recipe: str, name: str) -> list[str]:
    """One-epoch runs on 8 images at 64 px: enough to reach on_train_start and log what the recipe meets."""
    (tmp / f"{name}.yaml").write_text(recipe)
    sub = tmp / name
    sub.mkdir()
    return ["--weights", str(weights), "--data", str(_data(sub, coco128_dir, 8)), "--img", "64", "--epochs", "1",
            "--batch-size", "8", "--workers", "0", "--device", "cpu", "--project", str(tmp / "runs"), "--name", name,
            "--noval", "--noplots", "--noautoanchor", "--recipe", str(tmp / f"{name}.yaml")]


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory, coco128_dir: Path, yolov5n_pt: Path) -> dict:
    """One uninterrupted 4-epoch prune-then-QAT run; the QAT resume test compares against it."""
    tmp = tmp_path_factory.mktemp("qat")
    recipe = tmp / "qat.yaml"
    recipe.write_text(QAT_RUN)
    args = ["--weights", str(yolov5n_pt), "--data", str(_data(tmp, coco128_dir)), "--img", "128",
            "--batch-size", "32", "--workers", "0", "--device", "cpu", "--project", str(tmp / "runs"), "--noval",
            "--noplots", "--noautoanchor", "--seed", "1", "--recipe", str(recipe)]
    r = _train(args + ["--name", "q"])
    return {"tmp": tmp, "args": args, "out": tmp / "runs/q", "log": r.stdout + r.stderr}


@pytest.mark.slow
def test_prune_then_qat_phases_and_checkpoints(qat_run: dict) -> None:
    from utils.checkpoint import load_model
    out, log = qat_run["out"], qat_run["log"]
    rows = _rows(out / "results.csv")
    assert [row["x/phase"] for row in rows] == [1, 2, 3, 3]  # pruning, pruned, QAT, QAT
    assert all(k in rows[0] for k in ("sparsity/global", "x/lr0", "x/lr1", "x/lr2"))
    assert "EMA and AMP off" in log
    assert re.search(r"phase QAT, global sparsity 0[.]\d{4}, lr [\d.e-]+, [\d.e-]+, [\d.e-]+", log)  # console columns
    n_fq = lambda m: sum(type(x).__name__ == "FakeQuantize" for x in m.modules())  # noqa: E731
    pruned, qat = load_model(out / "weights/best_pruned.pt"), load_model(out / "weights/best_pruned_quantized.pt")
    assert n_fq(pruned) == 0 and n_fq(qat) > 100  # structure replayed from the stored recipe before the weights
    assert global_sparsity(qat) == pytest.approx(global_sparsity(pruned), abs=1e-3)
    assert global_sparsity(pruned) > 0.4
    assert qat(torch.zeros(1, 3, 128, 128))[0].shape[0] == 1
    for name in ("best_pruned.pt", "best_pruned_quantized.pt"):  # per-phase bests are stripped like best.pt
        assert "optimizer" not in torch.load(out / "weights" / name, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_resume_mid_qat_equals_uninterrupted(qat_run: dict) -> None:
    """Killed after epoch 2 (QAT on, BN not yet frozen): resuming must not freeze BN or stop observers early."""
    tmp = qat_run["tmp"]
    script = tmp / "kill.py"
    script.write_text(KILL_SCRIPT.format(root=str(ROOT), k=2))
    killed = _train(qat_run["args"] + ["--name", "cut"], script=script, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    cut = tmp / "runs/cut"
    assert [r["x/phase"] for r in _rows(cut / "results.csv")] == [1, 2, 3]
    _train(["--resume", str(cut / "weights/last.pt")])
    assert _rows(cut / "results.csv") == _rows(qat_run["out"] / "results.csv")
    a = torch.load(qat_run["out"] / "weights/last.pt", weights_only=True)["model"]
    b = torch.load(cut / "weights/last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_qat_twice_fails_with_clear_message(qat_run: dict, coco128_dir: Path, tmp_path: Path) -> None:
    quantized = qat_run["out"] / "weights/best_pruned_quantized.pt"
    r = _train(_short_args(tmp_path, coco128_dir, quantized, QAT_RUN, "twice"), check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith(f"ERROR: recipe {tmp_path / 'twice.yaml'}: QuantizationModifier") and "more than once" in err
    assert not (tmp_path / "runs/twice/weights/last.pt").exists()  # refused before any epoch


@pytest.mark.slow
def test_transfer_recipe_on_dense_checkpoint_warns(coco128_dir: Path, yolov5n_pt: Path, tmp_path: Path) -> None:
    transfer = "num_epochs: 1\n" + CONSTANT
    r = _train(_short_args(tmp_path, coco128_dir, yolov5n_pt, transfer, "dense"))
    log = r.stdout + r.stderr
    assert "holds sparsity with ConstantPruningModifier" in log and "the starting weights are only 0.0% sparse" in log
    assert "model will stay DENSE" in log and "!" * 100 in log  # loud: framed by a line of !


@pytest.mark.slow
def test_sparse_checkpoint_without_pruning_modifier_warns(gmp_run: dict, coco128_dir: Path, tmp_path: Path) -> None:
    from utils.checkpoint import load_model
    pruned = gmp_run["out"] / "weights/best_pruned.pt"
    start = global_sparsity(load_model(pruned))
    lr_only = GMP.split("  - !GMPruningModifier")[0].replace("num_epochs: 3", "num_epochs: 1")
    r = _train(_short_args(tmp_path, coco128_dir, pruned, lr_only, "nomask"))
    log = r.stdout + r.stderr
    assert f"has no pruning modifier: the {start:.1%} sparsity of the starting weights will NOT be kept" in log
    assert "ConstantPruningModifier" in log  # the warning says how to keep them
