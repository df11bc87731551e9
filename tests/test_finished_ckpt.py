"""Finished checkpoints are compact (fp16, no masks, no resume state) yet load to float32 with their sparsity;
the train logger records losses, metrics, LR and per-layer sparsity per epoch (sparsity.csv, TensorBoard)."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from tests.test_train import common_args, read_rows, run_train, tiny_data
from utils.checkpoint import QAT_MARKER, compact_state_dict, load_checkpoint, load_model, save_checkpoint
from utils.loggers import GLOBAL_ROW, LAYER_TAG, SPARSITY_COLUMNS
from utils.sparsity.measure import global_sparsity, layer_sparsity_table
from utils.trainer import RESULT_KEYS, strip_training_state

GMP_2 = """
modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: 2
  - !GMPruningModifier
    init_sparsity: 0.3
    final_sparsity: 0.5
    start_epoch: 0
    end_epoch: 1
    update_frequency: 1.0
    params: ["re:model[.][1-9][0-9]*[.].*conv[.]weight"]
"""


def tensors_in(obj: object) -> list[str]:
    """Paths of every tensor nested in dicts/lists (for 'no masks stored')."""
    if isinstance(obj, torch.Tensor):
        return [""]
    if isinstance(obj, dict):
        return [f"{k}/{p}" for k, v in obj.items() for p in tensors_in(v)]
    if isinstance(obj, (list, tuple)):
        return [f"{i}/{p}" for i, v in enumerate(obj) for p in tensors_in(v)]
    return []


def test_compact_keeps_every_zero_and_nonzero() -> None:
    w = torch.tensor([0.0, 1e-9, -1e-9, 0.25, -3.0])  # +-1e-9 underflow to 0 in fp16: kept nonzero (+-2**-24)
    big = torch.tensor([1e6, 0.0])  # inf in fp16: that tensor stays fp32
    sd = {"w": w, "big": big, "n": torch.tensor(3)}
    out = compact_state_dict(sd)
    assert out["w"].dtype == torch.float16 and torch.equal(out["w"] == 0, w == 0)
    assert out["w"][1:3].tolist() == [2.0 ** -24, -(2.0 ** -24)] and out["w"][3:].tolist() == [0.25, -3.0]
    assert out["big"] is big and out["n"].dtype == torch.int64
    qat = {"w": torch.ones(2), f"q{QAT_MARKER}": torch.ones(1, dtype=torch.uint8)}
    assert compact_state_dict(qat)["w"].dtype == torch.float32  # QAT: scales and rounding boundaries stay exact


def test_strip_drops_resume_state_and_masks_and_loads_float32(tmp_path: Path, tiny_model) -> None:
    path = tmp_path / "last.pt"
    masks = {"model.2.conv.weight.sparsity_mask": torch.ones(3)}
    save_checkpoint(path, tiny_model, epoch=3, optimizer={"state": {}},
                    callbacks={"sparsification": {"manager": masks, "phase": "pruned"}})
    strip_training_state(path)
    raw = torch.load(path, weights_only=True)
    assert "optimizer" not in raw and raw["callbacks"] == {"sparsification": {"manager": {}, "phase": "pruned"}}
    assert {v.dtype for v in raw["model"].values() if v.is_floating_point()} == {torch.float16}
    loaded = load_checkpoint(path)["model"]
    assert {v.dtype for v in loaded.values() if v.is_floating_point()} == {torch.float32}
    sd, half = tiny_model.state_dict(), compact_state_dict(tiny_model.state_dict())
    assert all(torch.equal(loaded[k], v.to(sd[k].dtype)) and torch.equal(loaded[k] == 0, sd[k] == 0)
               for k, v in half.items())


@pytest.fixture()
def tiny_model():
    from models.yolo import DetectionModel  # only this fixture builds a model
    torch.manual_seed(0)
    return DetectionModel("models/yolov5n.yaml", nc=2).eval()


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory, coco128_dir: Path, yolov5n_pt: Path) -> Path:
    """2 epochs of GMP pruning (30% then 50%) on 4 images at 64 px, as a user runs train.py."""
    tmp = tmp_path_factory.mktemp("finished")
    (tmp / "gmp.yaml").write_text(GMP_2)
    args = common_args(tiny_data(tmp, coco128_dir, n=4), yolov5n_pt, tmp / "runs", imgsz=64, epochs=2)
    run_train(args + ["--name", "p", "--noplots", "--noautoanchor", "--recipe", str(tmp / "gmp.yaml")])
    return tmp / "runs/p"


def sparsity_csv(run: Path) -> list[dict]:
    with open(run / "sparsity.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_finished_pruned_checkpoints_are_fp16_small_and_maskless(pruned_run: Path) -> None:
    for name in ("best.pt", "last.pt"):
        f = pruned_run / "weights" / name
        raw = torch.load(f, weights_only=True)
        assert f.stat().st_size < 4.5e6, f"{name}: {f.stat().st_size / 1e6:.2f} MB"
        assert {v.dtype for v in raw["model"].values() if v.is_floating_point()} == {torch.float16}
        assert "optimizer" not in raw and "train_model" not in raw
        assert tensors_in(raw["callbacks"]) == [] and tensors_in({k: v for k, v in raw.items() if k != "model"}) == []
        assert not [k for k in raw["model"] if "mask" in k]


@pytest.mark.slow
def test_finished_checkpoint_loads_float32_with_the_logged_sparsity(pruned_run: Path) -> None:
    model = load_model(pruned_run / "weights/last.pt")
    assert {p.dtype for p in model.state_dict().values() if p.is_floating_point()} == {torch.float32}
    logged = {r["layer"]: float(r["sparsity"]) for r in sparsity_csv(pruned_run) if r["epoch"] == "1"}
    table = layer_sparsity_table(model)
    assert {n: pytest.approx(s, abs=1e-6) for n, _, _, s in table} == {k: v for k, v in logged.items() if k != GLOBAL_ROW}
    assert global_sparsity(model) == pytest.approx(logged[GLOBAL_ROW], abs=1e-6)
    assert 0.3 < logged[GLOBAL_ROW] < 0.5 and logged["model.2.cv1.conv.weight"] == pytest.approx(0.5, abs=0.01)


@pytest.mark.slow
def test_sparsity_csv_has_every_layer_every_epoch(pruned_run: Path) -> None:
    rows = sparsity_csv(pruned_run)
    assert tuple(rows[0]) == SPARSITY_COLUMNS
    n_layers = len(layer_sparsity_table(load_model(pruned_run / "weights/last.pt")))
    for epoch, target in (("0", 0.3), ("1", 0.5)):  # GMP: init_sparsity in epoch 0, final_sparsity from epoch 1
        got = {r["layer"]: float(r["sparsity"]) for r in rows if r["epoch"] == epoch}
        assert len(got) == n_layers + 1 and got["model.0.conv.weight"] == 0.0  # layer 0 is not in the recipe
        assert got["model.23.cv3.conv.weight"] == pytest.approx(target, abs=0.01)
    results = read_rows(pruned_run / "results.csv")
    col = results[0].index("sparsity/global")
    glob = [float(r["sparsity"]) for r in rows if r["layer"] == GLOBAL_ROW]
    assert glob == [pytest.approx(float(r[col]), rel=1e-4) for r in results[1:]]


@pytest.mark.slow
def test_tensorboard_events_hold_metrics_lr_and_layer_sparsity(pruned_run: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # optional package
    ea = EventAccumulator(str(pruned_run))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert set(RESULT_KEYS) | {"x/phase"} <= tags
    layers = {t for t in tags if t.startswith(LAYER_TAG)}
    assert len(layers) == len(layer_sparsity_table(load_model(pruned_run / "weights/last.pt")))
    results = read_rows(pruned_run / "results.csv")
    for key in ("train/box_loss", "metrics/mAP_0.5", "x/lr0", "sparsity/global"):
        col = results[0].index(key)
        assert [e.step for e in ea.Scalars(key)] == [0, 1]
        assert [e.value for e in ea.Scalars(key)] == [pytest.approx(float(r[col]), rel=1e-4, abs=1e-6)
                                                      for r in results[1:]]
    csv_rows = {(r["epoch"], r["layer"]): float(r["sparsity"]) for r in sparsity_csv(pruned_run)}
    for e in ea.Scalars(LAYER_TAG + "model.23.cv3.conv.weight"):
        assert e.value == pytest.approx(csv_rows[(str(e.step), "model.23.cv3.conv.weight")], abs=1e-6)
