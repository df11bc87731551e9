"""Training: loss and helpers on tiny tensors, then end-to-end fine-tune, exact SIGKILL resume and DDP on coco128."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml

from utils.callbacks import Callback, CallbackList
from utils.loss import ComputeLoss, bbox_ciou
from utils.train_utils import (EarlyStopping, ModelEMA, increment_path, linear_lr, one_cycle, rng_state,
                               set_rng_state, smart_optimizer)

ROOT = Path(__file__).resolve().parents[1]
HYP = yaml.safe_load((ROOT / "data/hyps/hyp.scratch-low.yaml").read_text())
CSV_HEADER = ["epoch", "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
              "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "val/box_loss", "val/obj_loss", "val/cls_loss",
              "x/lr0", "x/lr1", "x/lr2", "sparsity/global"]


# ------------------------------------------------------------------------------------------------ unit tests
def test_ciou_identity_and_disjoint() -> None:
    a = torch.tensor([[5.0, 5.0, 2.0, 4.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[5.0, 5.0, 2.0, 4.0], [10.0, 10.0, 1.0, 1.0]])
    ciou = bbox_ciou(a, b)
    assert ciou.shape == (2,)
    assert ciou[0] == pytest.approx(1.0, abs=1e-6)
    assert ciou[1] < 0  # no overlap: the centre-distance penalty makes it negative


@pytest.fixture(scope="module")
def tiny_model():
    from models.yolo import DetectionModel
    m = DetectionModel("yolov5n.yaml", nc=3)
    m.hyp = {**HYP, "label_smoothing": 0.0}
    return m.train()


def test_build_targets_neighbour_cells(tiny_model) -> None:
    """A centre in the lower-left quarter of a cell also trains the cells to its left and above (3 cells)."""
    loss = ComputeLoss(tiny_model)
    p = [torch.zeros(1, 3, s, s, 8) for s in (8, 4, 2)]  # 64x64 input
    stride8_anchor = tiny_model.model[-1].anchors[0, 0] * 8 / 64  # anchor 0 of P3, normalised
    t = torch.tensor([[0, 1, (3 + 0.3) / 8, (4 + 0.2) / 8, *stride8_anchor.tolist()]])
    tcls, tbox, indices, anch = loss.build_targets(p, t)
    b, a, gj, gi = indices[0]
    cells = {(int(y), int(x)) for y, x, ai in zip(gj, gi, a) if ai == 0}
    assert cells == {(4, 3), (4, 2), (3, 3)}
    assert torch.all(tcls[0] == 1) and torch.all(tbox[0][:, :2] >= -0.5) and torch.all(tbox[0][:, :2] <= 1.5)


def test_loss_backward_and_scaling(tiny_model) -> None:
    loss_fn = ComputeLoss(tiny_model)
    x = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.3, 0.4], [1, 2, 0.3, 0.6, 0.2, 0.2]])
    pred = tiny_model(x)
    total, items = loss_fn(pred, targets)
    assert items.shape == (3,) and torch.all(items > 0) and not items.requires_grad
    assert total.item() == pytest.approx(items.sum().item() * 2, rel=1e-5)  # loss * batch size
    total.backward()
    assert tiny_model.model[-1].m[0].weight.grad.abs().sum() > 0
    tiny_model.zero_grad()
    _, empty = loss_fn(tiny_model(x), torch.zeros(0, 6))  # background-only batch: objectness loss only
    assert empty[0] == 0 and empty[2] == 0 and empty[1] > 0


def test_smart_optimizer_groups(tiny_model) -> None:
    opt = smart_optimizer(tiny_model, "SGD", 0.01, 0.937, 5e-4)
    biases, weights, norms = (g["params"] for g in opt.param_groups)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 5e-4, 0.0]
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in tiny_model.modules())
    assert len(norms) == n_bn and all(p.ndim == 1 for p in biases) and all(p.ndim == 4 for p in weights)
    assert len(biases) + len(weights) + len(norms) == len(list(tiny_model.parameters()))
    assert isinstance(smart_optimizer(tiny_model, "AdamW", 1e-3, 0.9, 0), torch.optim.AdamW)


def test_ema_ramp_and_state() -> None:
    model = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = ModelEMA(model, tau=10)
    model.weight.data.fill_(1.0)
    ema.update(model)  # decay(1) is small: the EMA jumps most of the way
    d1 = ema.decay(1)
    assert ema.ema.weight.flatten().tolist() == pytest.approx([1 - d1, 1 - d1])
    assert ema.decay(10_000) == pytest.approx(0.9999, abs=1e-6)
    other = ModelEMA(model)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1 and other.tau == 10


def test_lr_lambdas_follow_epochs() -> None:
    epochs = [10]
    lin, cos = linear_lr(0.01, lambda: epochs[0]), one_cycle(1, 0.01, lambda: epochs[0])
    assert lin(0) == 1.0 and lin(10) == pytest.approx(0.01) and cos(10) == pytest.approx(0.01)
    epochs[0] = 20  # a callback lengthening the run stretches the schedule
    assert lin(10) == pytest.approx(0.505) and cos(10) == pytest.approx(0.505)


def test_rng_state_roundtrip_weights_only(tmp_path: Path) -> None:
    import random

    import numpy as np
    gen = torch.Generator().manual_seed(3)
    state = rng_state(gen)
    torch.save(state, tmp_path / "rng.pt")
    first = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), gen)
    assert (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item()) == first


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_retained_heap_reuses_freed_memory() -> None:
    """Inside retained_heap a freed 64 MB tensor's pages are reused by the next one instead of faulted in again."""
    import resource
    from utils.train_utils import retained_heap

    def faults_of_churn() -> int:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(4):
            torch.ones(16_000_000).sum()  # 64 MB: above glibc's largest automatic mmap threshold
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

    plain = faults_of_churn()
    with retained_heap():
        kept = faults_of_churn()
    assert kept < plain / 2, (kept, plain)


def test_early_stopping() -> None:
    stop = EarlyStopping(patience=2)
    assert not stop(0, 0.5) and not stop(1, 0.4)
    assert stop.possible_stop and stop(2, 0.3)
    never = EarlyStopping(patience=0)
    assert not any(never(e, 0.0 if e else 1.0) for e in range(50))


def test_callback_list_dispatch_and_state() -> None:
    calls = []

    class Recorder(Callback):
        def __init__(self):
            self.n = 0

        def on_train_epoch_end(self, trainer):
            self.n += 1
            calls.append(trainer)
            trainer.epochs = 7  # hooks steer the trainer through its attributes

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, state):
            self.n = state["n"]

    trainer = type("T", (), {"epochs": 3})()
    cbs = CallbackList([Recorder()])
    cbs.on_train_epoch_end(trainer)
    cbs.on_train_batch_start(trainer)  # base no-op
    assert calls == [trainer] and trainer.epochs == 7 and cbs.state_dict() == {"Recorder": {"n": 1}}
    fresh = CallbackList([Recorder()])
    fresh.load_state_dict({"Recorder": {"n": 5}})
    assert fresh.callbacks[0].n == 5
    with pytest.raises(ValueError, match="unknown callback hook"):
        cbs.run("on_nothing", trainer)


def test_increment_path(tmp_path: Path) -> None:
    assert increment_path(tmp_path / "exp") == tmp_path / "exp"
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp2").mkdir()
    assert increment_path(tmp_path / "exp") == tmp_path / "exp3"
    assert increment_path(tmp_path / "exp", exist_ok=True) == tmp_path / "exp"


# ------------------------------------------------------------------------------------------- end-to-end runs
def tiny_data(tmp_path: Path, coco128_dir: Path, n: int = 8) -> Path:
    """Data yaml over the first n coco128 images (list file in tmp, so the label cache lands in tmp too)."""
    images = sorted((coco128_dir / "images/train2017").glob("*.jpg"))[:n]
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{p}\n" for p in images))
    names = (coco128_dir / "classes.txt").read_text().splitlines()
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(tmp_path), "train": str(listing), "val": str(listing), "names": names}))
    return data


def run_train(args: list[str], script: Path | None = None, launcher: list[str] | None = None,
              check: bool = True) -> subprocess.CompletedProcess:
    """train.py (or a wrapper script) in a fresh process, as a user runs it; fresh process = fresh global RNG/flags."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    cmd = [*(launcher or [sys.executable]), str(script or ROOT / "train.py"), *args]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def read_rows(csv: Path) -> list[list[str]]:
    return [[c.strip() for c in ln.split(",")] for ln in csv.read_text().splitlines() if ln.strip()]


def common_args(data: Path, weights: Path, project: Path, imgsz: int = 160, epochs: int = 2) -> list[str]:
    return ["--weights", str(weights), "--data", str(data), "--img", str(imgsz), "--epochs", str(epochs),
            "--batch-size", "4", "--workers", "0", "--device", "cpu", "--project", str(project)]


def trained_params(before: Path, after: Path) -> tuple[int, int]:
    """(changed, total) conv weight tensors between two checkpoints' models: buffers (BN statistics, anchors)
    move without a single optimizer step, so only nn.Parameters tell that training trained; and of those only the
    conv weights, since a finished file is fp16, where a few warm-up steps' BN/bias updates round back to the start."""
    from utils.checkpoint import load_model
    ref = load_model(before)
    new = torch.load(after, map_location="cpu", weights_only=True)["model"]
    names = [k for k, p in ref.named_parameters() if p.dim() == 4]
    ref_sd = ref.state_dict()
    assert names and all(k in new for k in names)
    return sum(not torch.equal(ref_sd[k].float(), new[k].float()) for k in names), len(names)


def test_finetune_writes_all_outputs(tmp_path: Path, coco128_dir: Path, yolov5n_pt: Path) -> None:
    from utils.checkpoint import load_model
    data = tiny_data(tmp_path, coco128_dir)
    r = run_train(common_args(data, yolov5n_pt, tmp_path / "runs") + ["--name", "ft"])
    out = tmp_path / "runs" / "ft"
    for f in ("opt.yaml", "hyp.yaml", "results.csv", "results.png", "labels.jpg", "train_batch0.jpg",
              "confusion_matrix.png", "PR_curve.png", "F1_curve.png", "weights/last.pt", "weights/best.pt"):
        assert (out / f).is_file(), f"missing {f}"
    rows = read_rows(out / "results.csv")
    assert rows[0] == CSV_HEADER and [row[0] for row in rows[1:]] == ["0", "1"]
    assert all(math.isfinite(float(v)) for row in rows[1:] for v in row)
    assert float(rows[-1][6]) > 0.3  # pretrained yolov5n keeps detecting the training images (mAP@0.5)
    ckpt = torch.load(out / "weights/last.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and "optimizer" not in ckpt and len(ckpt["names"]) == 80  # stripped at the end
    changed, total = trained_params(yolov5n_pt, out / "weights/last.pt")
    assert changed > 0.9 * total, (changed, total)  # the optimizer stepped: (nearly) every weight and bias moved
    model = load_model(out / "weights/last.pt")
    assert model(torch.zeros(1, 3, 160, 160))[0].shape == (1, 3 * (20 * 20 + 10 * 10 + 5 * 5), 85)
    opt = yaml.safe_load((out / "opt.yaml").read_text())
    assert opt["imgsz"] == 160 and opt["save_dir"] == str(out) and opt["hyp"]["lr0"] == HYP["lr0"]
    assert "Epoch" in r.stdout + r.stderr and "Validating" in r.stdout + r.stderr


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {root!r})
import train
from utils.callbacks import Callback

class KillAfterEpoch(Callback):
    def on_train_epoch_start(self, trainer):
        if trainer.epoch == {k} + 1:  # last.pt of epoch k is on disk: die as hard as a crash or OOM kill
            os.kill(os.getpid(), signal.SIGKILL)

train.main(train.parse_opt(), callbacks=[KillAfterEpoch()])
"""


@pytest.mark.parametrize("workers", [0, 2])  # 2: persistent loader workers must not change the draws
def test_sigkill_then_resume_matches_uninterrupted(tmp_path: Path, coco128_dir: Path, yolov5n_pt: Path,
                                                   workers: int) -> None:
    data = tiny_data(tmp_path, coco128_dir)
    args = common_args(data, yolov5n_pt, tmp_path / "runs", imgsz=128, epochs=3) + ["--seed", "3", "--noplots",
                                                                                     "--workers", str(workers)]
    run_train(args + ["--name", "full"])
    script = tmp_path / "kill_train.py"
    script.write_text(KILL_SCRIPT.format(root=str(ROOT), k=0))
    killed = run_train(args + ["--name", "cut"], script=script, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    cut = tmp_path / "runs" / "cut"
    assert len(read_rows(cut / "results.csv")) == 2  # header + epoch 0
    run_train(["--resume", str(cut / "weights/last.pt")])
    full_rows, cut_rows = read_rows(tmp_path / "runs/full/results.csv"), read_rows(cut / "results.csv")
    assert len(cut_rows) == 4 and cut_rows == full_rows
    a = torch.load(tmp_path / "runs/full/weights/last.pt", weights_only=True)["model"]
    b = torch.load(cut / "weights/last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical weights, not just equal csv digits
    changed, total = trained_params(yolov5n_pt, cut / "weights/last.pt")  # identical because both trained, not
    assert changed > 0.9 * total, (changed, total)  # because neither did (a no-op trainer also resumes exactly)


HOOK_SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
import train
from utils.callbacks import Callback

class Recipe(Callback):  # what a pruning/QAT callback needs to do, without branches in the loop
    def __init__(self):
        self.calls = {{}}

    def __getattribute__(self, name):
        if name.startswith("on_"):
            calls = object.__getattribute__(self, "calls")
            calls[name] = calls.get(name, 0) + 1
        return object.__getattribute__(self, name)

    def on_train_start(self, trainer):
        trainer.epochs = 2  # the recipe, not --epochs, sets the length

    def on_train_epoch_start(self, trainer):
        if trainer.epoch == 1:  # "QAT starts": no EMA, no AMP, LR driven by the callback
            trainer.ema, trainer.amp, trainer.scheduler, trainer.nw = None, False, None, -1
            for g in trainer.optimizer.param_groups:
                g["lr"] = 0.0

    def on_model_save(self, trainer, ckpt):
        ckpt["recipe"] = "version: 1.1.0"

    def state_dict(self):
        return {{"epochs_seen": self.calls.get("on_train_epoch_start", 0)}}

    def on_train_end(self, trainer):
        json.dump(self.calls, open({out!r}, "w"))

train.main(train.parse_opt(), callbacks=[Recipe()])
"""


def test_callbacks_steer_epochs_ema_lr_and_checkpoint(tmp_path: Path, coco128_dir: Path, yolov5n_pt: Path) -> None:
    import json
    data = tiny_data(tmp_path, coco128_dir, n=4)
    script = tmp_path / "hooks.py"
    script.write_text(HOOK_SCRIPT.format(root=str(ROOT), out=str(tmp_path / "calls.json")))
    args = common_args(data, yolov5n_pt, tmp_path / "runs", imgsz=128, epochs=1) + ["--name", "h", "--noplots"]
    run_train(args, script=script)
    calls, out = json.loads((tmp_path / "calls.json").read_text()), tmp_path / "runs" / "h"
    assert calls["on_train_start"] == 1 and calls["on_train_epoch_start"] == 2 and calls["on_fit_epoch_end"] == 2
    assert calls["on_train_batch_start"] == calls["on_train_batch_end"] == 2  # 4 images, batch 4, 2 epochs
    assert calls["on_before_optimizer_step"] == calls["on_after_optimizer_step"] >= 1
    rows = read_rows(out / "results.csv")
    assert [r[0] for r in rows[1:]] == ["0", "1"] and float(rows[2][11]) == 0.0  # x/lr0 held at 0 by the hook
    ckpt = torch.load(out / "weights/last.pt", weights_only=True)
    assert ckpt["recipe"] == "version: 1.1.0" and ckpt["callbacks"] == {"Recipe": {"epochs_seen": 2}}


RANK_DUMP_SCRIPT = """
import os, sys
sys.path.insert(0, {root!r})
import torch
import train
from utils.callbacks import Callback
from utils.train_utils import de_parallel

class DumpRankWeights(Callback):  # each rank writes the raw (non-EMA) weights it ends with
    def on_train_end(self, trainer):
        sd = {{k: p.detach().cpu().clone() for k, p in de_parallel(trainer.model).named_parameters()}}
        torch.save(sd, os.path.join({out!r}, "rank%s.pt" % os.environ.get("RANK", "-1")))

train.main(train.parse_opt(), callbacks=[DumpRankWeights()])
"""


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path: Path, coco128_dir: Path, yolov5n_pt: Path) -> None:
    from utils.checkpoint import load_model
    data = tiny_data(tmp_path, coco128_dir)
    args = common_args(data, yolov5n_pt, tmp_path / "runs", imgsz=128, epochs=1) + ["--name", "ddp", "--noplots"]
    script = tmp_path / "dump_ranks.py"
    script.write_text(RANK_DUMP_SCRIPT.format(root=str(ROOT), out=str(tmp_path)))
    r = run_train(args, script=script, launcher=[sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                 "--nproc_per_node", "2"])
    out = tmp_path / "runs" / "ddp"
    rows = read_rows(out / "results.csv")
    assert len(rows) == 2 and float(rows[1][6]) > 0.2  # one row: rank 0 alone validates and logs
    assert (out / "weights/best.pt").is_file() and not (tmp_path / "runs/ddp2").exists()  # one shared save_dir
    assert (r.stdout + r.stderr).count("Starting training") == 1

    # DDP all-reduces gradients: both ranks step the same optimizer on the same gradient and end bit-identical
    w0, w1 = (torch.load(tmp_path / f"rank{k}.pt", weights_only=True) for k in (0, 1))
    assert w0.keys() == w1.keys() and len(w0) > 100
    assert [k for k in w0 if not torch.equal(w0[k], w1[k])] == []
    # ... and they trained: the weights moved away from the pretrained ones (mAP50 > 0.2 holds untrained too)
    ref = dict(load_model(yolov5n_pt).named_parameters())
    moved = sum(not torch.equal(ref[k].detach(), w0[k]) for k in w0)
    assert moved > 0.9 * len(w0), (moved, len(w0))
    changed, total = trained_params(yolov5n_pt, out / "weights/last.pt")  # the saved EMA moved too
    assert changed > 0.9 * total, (changed, total)
    # Not compared with a single-process run of the same global batch and seed: it cannot be bit-equal, and no
    # tolerance would be principled. On CPU there is no SyncBN, so each rank normalises with the statistics of its
    # own 2 images instead of 4; each rank seeds its augmentation RNG with seed + 1 + rank, so the mosaics differ;
    # and the box/cls losses are means over each shard's targets, which the x world_size rescale equals the
    # single-process mean only when both shards hold the same number of targets.
