"""Faults: kills during training and mid-checkpoint, full or read-only disks, concurrent readers, and no network.

Fast tests drive utils.checkpoint.atomic_save directly (a chunked torch.save makes the "reader looks while the
writer is half-way" moment deterministic). The slow ones run a seeded CPU training with a GMP pruning recipe on
8 coco128 images at 64 px, kill it at each stage of a checkpoint write (SIGKILL from inside torch.save/os.replace),
and check that --resume lands on the same masks, weights and results.csv as an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from utils.checkpoint import (CheckpointError, CheckpointWriteError, atomic_save, compact_state_dict, load_checkpoint,
                              load_model)
from utils.cli import exit_on_user_error, user_error_message

ROOT = Path(__file__).resolve().parents[1]
TORCH_SAVE = torch.save  # the real one, for fakes that write part of a real checkpoint
# what torch 2.13 raised when a real 1 MB tmpfs filled up during torch.save (see test_real_full_disk_on_tmpfs)
TORCH_FULL_DISK = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"


def temps(folder: Path) -> list[str]:
    """atomic_save's temp files in a folder (hidden, .tmp)."""
    return sorted(p.name for p in folder.glob(".*.tmp"))


def small_ckpt(epoch: int, n: int = 1000) -> dict:
    return {"format": "yolov5-sparse", "epoch": epoch, "model": {"w": torch.full((n,), float(epoch))}}


# ------------------------------------------------------------------------------------ concurrent readers
def test_reader_sees_old_or_new_file_never_a_partial_one(tmp_path: Path, monkeypatch) -> None:
    """A reader that looks at every quarter of a write gets the previous complete file; a plain write would break it."""
    path, seen = tmp_path / "last.pt", []

    def look() -> None:
        try:
            seen.append(torch.load(path, weights_only=True)["epoch"])
        except FileNotFoundError:
            seen.append("absent")
        except Exception as e:  # a partial zip: what a non-atomic writer exposes
            seen.append(f"broken {type(e).__name__}")

    def chunked_save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        TORCH_SAVE(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        step = len(data) // 4 + 1
        for i in range(0, len(data), step):
            f.write(data[i:i + step])
            f.flush()
            look()

    monkeypatch.setattr(torch, "save", chunked_save)
    atomic_save(small_ckpt(1, 50_000), path)
    atomic_save(small_ckpt(2, 50_000), path)
    assert seen == ["absent"] * 4 + [1] * 4 and torch.load(path, weights_only=True)["epoch"] == 2
    seen.clear()
    with open(path, "wb") as f:  # control: the same write straight into last.pt is seen half-done
        chunked_save(small_ckpt(3, 50_000), f)
    assert any(str(s).startswith("broken") for s in seen[:3]), seen


# ------------------------------------------------------------------------------------ full / read-only disk
@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     OSError(errno.EDQUOT, "Disk quota exceeded"),
                                     RuntimeError(TORCH_FULL_DISK)], ids=["ENOSPC", "EDQUOT", "torch-writer"])
def test_full_disk_is_one_clear_error_and_keeps_previous(tmp_path: Path, monkeypatch, failure) -> None:
    path = tmp_path / "run" / "weights" / "last.pt"
    atomic_save(small_ckpt(0), path)
    before = path.read_bytes()

    def fills_up(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04" + bytes(4096))  # some bytes land before the disk is full
        raise failure

    monkeypatch.setattr(torch, "save", fills_up)
    with pytest.raises(CheckpointWriteError) as e:
        atomic_save(small_ckpt(1), path)
    msg = str(e.value)
    assert isinstance(e.value, CheckpointError) and "\n" not in msg
    assert f"cannot write checkpoint last.pt in {path.parent}:" in msg and "MB free there" in msg
    assert "Free disk space or choose a writable folder" in msg and "the previous last.pt is intact" in msg
    assert path.read_bytes() == before and temps(path.parent) == []


@pytest.mark.parametrize("err", [errno.EACCES, errno.EROFS])
def test_unwritable_folder_is_one_clear_error(tmp_path: Path, monkeypatch, err: int) -> None:
    """What mkstemp raises in a folder we may not write to (permissions, or a read-only mount)."""
    path = tmp_path / "weights" / "best.pt"
    atomic_save(small_ckpt(0), path)

    def refuse(*args, dir=None, **kwargs):
        raise OSError(err, os.strerror(err), str(dir))

    monkeypatch.setattr("tempfile.mkstemp", refuse)
    with pytest.raises(CheckpointWriteError) as e:
        atomic_save(small_ckpt(1), path)
    msg = str(e.value)
    assert os.strerror(err) in msg and str(path.parent) in msg and "the previous best.pt is intact" in msg
    assert torch.load(path, weights_only=True)["epoch"] == 0


@contextlib.contextmanager
def tmpfs(folder: Path, options: str):
    """A real small filesystem; needs root (and a container that allows mounts), else the test is skipped."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_real_full_disk_on_tmpfs(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "size=1m") as disk:
        path = disk / "weights" / "last.pt"
        atomic_save(small_ckpt(0), path)
        with pytest.raises(CheckpointWriteError, match=r"last.pt in .*small/weights: .*\(\d+ MB free there\)"):
            atomic_save(small_ckpt(1, 1_000_000), path)  # 4 MB into 1 MB
        assert torch.load(path, weights_only=True)["epoch"] == 0 and temps(path.parent) == []


def test_real_read_only_folder(tmp_path: Path) -> None:
    """chmod for ordinary users; root ignores modes, so it gets a tmpfs remounted read-only."""
    folder = tmp_path / "ro"
    with contextlib.ExitStack() as stack:
        if os.geteuid() == 0:
            stack.enter_context(tmpfs(folder, "size=4m"))
        path = folder / "weights" / "last.pt"
        atomic_save(small_ckpt(0), path)
        if os.geteuid() == 0:
            r = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True, text=True)
            if r.returncode:
                pytest.skip(f"cannot remount read-only: {r.stderr.strip()}")
        else:
            path.parent.chmod(0o555)
            stack.callback(path.parent.chmod, 0o755)
        with pytest.raises(CheckpointWriteError) as e:
            atomic_save(small_ckpt(1), path)
        assert str(path.parent) in str(e.value) and "the previous last.pt is intact" in str(e.value)
        assert torch.load(path, weights_only=True)["epoch"] == 0


def test_train_into_read_only_project_is_one_line(tmp_path: Path, coco128_dir: Path, yolov5n_pt: Path) -> None:
    project = tmp_path / "ro"
    with contextlib.ExitStack() as stack:
        if os.geteuid() == 0:
            stack.enter_context(tmpfs(project, "ro,size=1m"))
        else:
            project.mkdir()
            project.chmod(0o555)
            stack.callback(project.chmod, 0o755)
        r = train(["--weights", str(yolov5n_pt), "--data", str(tiny_data(tmp_path, coco128_dir, 4)), "--img", "64",
                   "--epochs", "1", "--workers", "0", "--project", str(project)])
    err = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert err.startswith(f"ERROR: {project}") and "writable folder (e.g. --project)" in err


def test_stale_temps_of_dead_writers_are_removed(tmp_path: Path) -> None:
    """A writer killed mid-save leaves .last.pt.<pid>.*.tmp; the next save removes it unless that pid still lives."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "weights"
    folder.mkdir()
    names = {"dead": f".last.pt.{dead.pid}.abc123.tmp", "ours": f".last.pt.{os.getpid()}.x_1.tmp",
             "alive": f".last.pt.{os.getppid()}.q9.tmp", "best": f".best.pt.{dead.pid}.zz.tmp"}
    for n in names.values():
        (folder / n).write_bytes(b"PK partial")
    atomic_save(small_ckpt(0), folder / "last.pt")
    # a pid reused after a container restart can be our own: then the file cannot be a live writer's
    assert temps(folder) == sorted([names["alive"], names["best"]])


def test_cli_wrapper_turns_storage_errors_into_one_line(tmp_path: Path, capsys) -> None:
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "results.csv"))
    assert user_error_message(full) == (f"{tmp_path / 'results.csv'}: No space left on device; "
                                        f"free disk space or choose a folder on another disk (e.g. --project)")
    denied = PermissionError(errno.EACCES, "Permission denied", "/runs/train/exp")
    assert user_error_message(denied).startswith("/runs/train/exp: Permission denied; choose a folder you can write")
    assert user_error_message(OSError(errno.EIO, "I/O error")) is None  # hardware trouble keeps its traceback
    assert user_error_message(KeyError("x")) is None
    with pytest.raises(SystemExit) as e, exit_on_user_error():
        raise CheckpointWriteError(f"cannot write checkpoint last.pt in {tmp_path}: No space left on device")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ERROR: cannot write checkpoint last.pt") and err.count("\n") == 1


# ------------------------------------------------------------------------------------------ no network
NET_GUARD = """
import errno, json, os, runpy, socket, sys
attempts = []

def _refuse(what):
    def call(*args, **kwargs):
        attempts.append(f"{what} {args[:2]!r}"[:200])
        raise OSError(errno.ENETUNREACH, "network disabled by test")
    return call

_connect = socket.socket.connect
def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        return _refuse("connect")(address)
    return _connect(self, address)  # local (AF_UNIX) sockets are not the network

socket.socket.connect = connect
socket.socket.connect_ex = lambda self, address: connect(self, address)
socket.getaddrinfo = _refuse("getaddrinfo")
socket.create_connection = _refuse("create_connection")

def report():
    with open(os.environ["NET_REPORT"], "w") as f:
        json.dump({"attempts": attempts, "NM_DISABLE_ANALYTICS": os.environ.get("NM_DISABLE_ANALYTICS")}, f)

sys.path.insert(0, ROOT_DIR)
script, sys.argv = sys.argv[1], sys.argv[1:]
try:
    if script in ("imports", "imports-raw"):  # raw = control: sparsezoo imported without our utils package first
        if script == "imports":
            import utils
        import sparsezoo  # its analytics look up ident.me while importing, unless switched off
        from sparsezoo.analytics import analytics_disabled
        assert script == "imports-raw" or analytics_disabled() == "1"  # their own switch reads ours
    else:
        runpy.run_path(script, run_name="__main__")
finally:
    report()
"""


CI_MARKERS = ("NM_DISABLE_ANALYTICS", "CI", "TF_BUILD", "JENKINS_URL")  # vendors' telemetry goes quiet under these


def user_env() -> dict[str, str]:
    """The environment as a user's fresh shell has it: without the CI markers that silence vendors' telemetry."""
    return {k: v for k, v in os.environ.items() if k not in CI_MARKERS}


def guarded(tmp_path: Path, *args: str, rc: int = 0, env_extra: dict | None = None) -> dict:
    """Run a script (or an import set) with every IP connection and DNS lookup refused and recorded."""
    guard, out = tmp_path / "net_guard.py", tmp_path / f"net_{len(list(tmp_path.glob('net_*.json')))}.json"
    guard.write_text(NET_GUARD.replace("ROOT_DIR", repr(str(ROOT))))
    r = subprocess.run([sys.executable, str(guard), *args], cwd=ROOT,
                       env={**user_env(), **(env_extra or {}), "NET_REPORT": str(out)}, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == rc, r.stderr[-3000:]
    report = json.loads(out.read_text())
    report.setdefault("stderr", r.stderr)
    return report


def test_imports_make_no_connection_and_disable_analytics(tmp_path: Path) -> None:
    control = guarded(tmp_path, "imports-raw")
    assert control["attempts"], "the guard must see sparsezoo's analytics lookup when analytics are on"
    ours = guarded(tmp_path, "imports")  # sparseml and deepsparse are imported by the scripts in the slow test
    assert {k: ours[k] for k in ("attempts", "NM_DISABLE_ANALYTICS")} == {"attempts": [], "NM_DISABLE_ANALYTICS": "1"}


@pytest.mark.slow
def test_scripts_make_no_connection(tmp_path: Path, coco128_dir: Path, yolov5n_pt: Path, bus_jpg: Path) -> None:
    """val, detect, export, benchmark (DeepSparse) and a pruning train run on local files never touch the network."""
    data = tiny_data(tmp_path, coco128_dir, 4)
    weights = tmp_path / "yolov5n.pt"
    shutil.copy(yolov5n_pt, weights)
    recipe = tmp_path / "gmp.yaml"
    recipe.write_text(GMP.replace("num_epochs: 3", "num_epochs: 1").replace("end_epoch: 2", "end_epoch: 1"))
    runs = [
        ["val.py", "--weights", weights, "--data", data, "--img", "64", "--workers", "0", "--project", tmp_path / "v"],
        ["detect.py", "--weights", weights, "--source", bus_jpg, "--img", "64", "--project", tmp_path / "d"],
        ["export.py", "--weights", weights, "--img", "64"],
        ["benchmark.py", "--weights", tmp_path / "yolov5n.onnx", "--engines", "deepsparse", "onnxruntime", "--img",
         "64", "--warmup", "1", "--iterations", "1", "--random", "--project", tmp_path / "b"],
        ["train.py", "--weights", weights, "--data", data, "--img", "64", "--epochs", "1", "--batch-size", "4",
         "--workers", "0", "--noplots", "--noautoanchor", "--recipe", recipe, "--project", tmp_path / "t"],
    ]
    for args in runs:
        report = guarded(tmp_path, *map(str, args))
        assert {k: report[k] for k in ("attempts", "NM_DISABLE_ANALYTICS")} == {"attempts": [],
                                                                                "NM_DISABLE_ANALYTICS": "1"}, args[0]
    assert (tmp_path / "t/exp/weights/last.pt").is_file()


# ------------------------------------------------------------------------------- SIGKILL during training
GMP = """
num_epochs: 3
modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: eval(num_epochs)
  - !GMPruningModifier
    init_sparsity: 0.2
    final_sparsity: 0.5
    start_epoch: 0
    end_epoch: 2
    update_frequency: 1.0
    params: ["re:model[.][1-9][0-9]*[.].*conv[.]weight"]
"""

# FAULT=<stage>@<epoch>: the SIGKILL (or disk-full error) lands inside the real atomic_save of that epoch's last.pt
FAULT_SCRIPT = """
import errno, io, os, runpy, signal, sys
import torch
stage, _, epoch = os.environ.get("FAULT", "none@-1").partition("@")
epoch = int(epoch)
_save, _replace, now = torch.save, os.replace, {{}}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def target(f):  # name of the checkpoint a temp file becomes: .last.pt.<pid>.xxx.tmp -> last.pt
    try:
        return os.path.basename(os.readlink(f"/proc/self/fd/{{f.fileno()}}")).split(".pt.")[0][1:] + ".pt"
    except (OSError, AttributeError, ValueError):
        return ""

def save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and "format" in obj and target(f) == "last.pt":  # remember which last.pt this is
        now.update(epoch=obj.get("epoch"), training="optimizer" in obj)
        if now["epoch"] == epoch and stage in ("write", "strip") and now["training"] == (stage == "write"):
            buf = io.BytesIO()
            _save(obj, buf, *args, **kwargs)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])  # half the bytes are on disk when it dies
            f.flush()
            os.fsync(f.fileno())
            die()
        if now["epoch"] == epoch and stage == "enospc":
            f.write(b"PK" + bytes(4096))
            raise OSError(errno.ENOSPC, "No space left on device")
    return _save(obj, f, *args, **kwargs)

def replace(src, dst, *args, **kwargs):
    hit = os.path.basename(dst) == "last.pt" and now.get("epoch") == epoch and now.get("training")
    if hit and stage == "rename":  # complete temp file, fsynced, not yet renamed
        die()
    _replace(src, dst, *args, **kwargs)
    if hit and stage == "renamed":  # last.pt is new, best.pt not yet written
        die()

torch.save, os.replace = save, replace
sys.path.insert(0, {root!r})
sys.argv = [{train!r}] + sys.argv[1:]
runpy.run_path({train!r}, run_name="__main__")
"""

READER_SCRIPT = """
import json, os, sys, time
import torch
path, stop, out = sys.argv[1:4]
loads, epochs, errors = 0, set(), []
while not os.path.exists(stop):
    if os.path.exists(path):
        try:  # once last.pt exists it must always be a complete checkpoint
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            assert ckpt["format"] == "yolov5-sparse" and len(ckpt["model"]) > 100
            loads, epochs = loads + 1, epochs | {{int(ckpt["epoch"])}}
        except Exception as e:
            errors.append(f"{{type(e).__name__}}: {{e}}"[:300])
    time.sleep(0.02)
json.dump({{"loads": loads, "epochs": sorted(epochs), "errors": errors}}, open(out, "w"))
"""


def finished_weights(path: Path) -> dict:
    """Weights as a finished file stores them (fp16, zeros kept): a file the kill left unstripped (fp32) compares with
    the reference's stripped one value for value."""
    return compact_state_dict(load_checkpoint(path)["model"])


def tiny_data(tmp: Path, coco128_dir: Path, n: int = 8) -> Path:
    images = sorted((coco128_dir / "images/train2017").glob("*.jpg"))[:n]
    (tmp / "images.txt").write_text("".join(f"{p}\n" for p in images))
    names = (coco128_dir / "classes.txt").read_text().splitlines()
    data = tmp / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(tmp), "train": str(tmp / "images.txt"), "val": str(tmp / "images.txt"),
                                    "names": names}))
    return data


def train(args: list[str], fault: str = "none@-1", script: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "FAULT": fault}
    cmd = [sys.executable, str(script or ROOT / "train.py"), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


def rows(csv: Path) -> list[list[str]]:
    return [[c.strip() for c in ln.split(",")] for ln in csv.read_text().splitlines() if ln.strip()]


def ckpt_epoch(path: Path) -> tuple[int, bool]:
    """(epoch, still holds training state) of a checkpoint that must load both ways."""
    raw = torch.load(path, map_location="cpu", weights_only=True)
    load_model(path)  # the user-facing loader (rebuilds the recipe structure) works too
    return int(raw["epoch"]), raw.get("optimizer") is not None


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory, coco128_dir: Path, yolov5n_pt: Path) -> dict:
    """An uninterrupted run watched by a second reading process, and one run taken through every fault in turn."""
    tmp = tmp_path_factory.mktemp("faults")
    (tmp / "gmp.yaml").write_text(GMP)
    script = tmp / "fault_train.py"
    script.write_text(FAULT_SCRIPT.format(root=str(ROOT), train=str(ROOT / "train.py")))
    (tmp / "reader.py").write_text(READER_SCRIPT.format())
    args = ["--weights", str(yolov5n_pt), "--data", str(tiny_data(tmp, coco128_dir)), "--img", "64", "--epochs", "9",
            "--batch-size", "4", "--workers", "0", "--device", "cpu", "--project", str(tmp / "runs"), "--seed", "1",
            "--noplots", "--noautoanchor", "--recipe", str(tmp / "gmp.yaml")]
    ref_w = tmp / "runs/ref/weights"
    reader = subprocess.Popen([sys.executable, str(tmp / "reader.py"), str(ref_w / "last.pt"), str(tmp / "stop"),
                               str(tmp / "reader.json")])
    try:
        ref = train(args + ["--name", "ref"])
    finally:
        (tmp / "stop").touch()
        reader.wait(timeout=120)
    assert ref.returncode == 0, ref.stderr[-3000:]
    cut, steps = tmp / "runs/cut", {}
    resume = ["--resume", str(tmp / "runs/cut/weights/last.pt")]
    for name, fault in (("renamed0", "renamed@0"), ("enospc", "enospc@1"), ("write", "write@1"),
                        ("rename", "rename@1"), ("renamed", "renamed@1"), ("strip", "strip@2"),
                        ("finished", "none@-1")):
        r = train(resume if steps else args + ["--name", "cut"], fault, script)
        last, best = cut / "weights/last.pt", cut / "weights/best.pt"
        steps[name] = {"rc": r.returncode, "stderr": r.stderr, "ckpt": ckpt_epoch(last),
                       "temps": temps(last.parent), "best": ckpt_epoch(best) if best.exists() else None}
    reader_report = json.loads((tmp / "reader.json").read_text())
    return {"ref": tmp / "runs/ref", "cut": cut, "steps": steps, "reader": reader_report}


@pytest.mark.slow
def test_every_fault_leaves_a_loadable_last_pt(killed_runs: dict) -> None:
    s = killed_runs["steps"]
    # SIGKILL right after the first last.pt is renamed into place
    assert s["renamed0"]["rc"] == -9 and s["renamed0"]["ckpt"] == (0, True) and s["renamed0"]["temps"] == []
    # disk full at epoch 1: one line naming the folder, exit 1 (train.py's code for user errors), epoch 0 kept
    err = s["enospc"]["stderr"].strip().splitlines()[-1]
    assert s["enospc"]["rc"] == 1 and "Traceback" not in s["enospc"]["stderr"], s["enospc"]["stderr"][-3000:]
    assert err.startswith("ERROR: cannot write checkpoint last.pt in ") and "runs/cut/weights" in err
    assert "No space left on device" in err and "the previous last.pt is intact" in err
    assert s["enospc"]["ckpt"] == (0, True) and s["enospc"]["temps"] == []
    # SIGKILL half-way through the temp file, then with the temp complete but not renamed: last.pt is epoch 0
    for step in ("write", "rename"):
        assert s[step]["rc"] == -9 and s[step]["ckpt"] == (0, True), s[step]["stderr"][-3000:]
        assert len(s[step]["temps"]) == 1 and s[step]["temps"][0].startswith(".last.pt.")
    assert s["write"]["temps"] != s["rename"]["temps"]  # the next save removed the dead writer's temp
    # SIGKILL just after the rename (best.pt not yet written): the new last.pt is whole
    assert s["renamed"]["rc"] == -9 and s["renamed"]["ckpt"] == (1, True) and s["renamed"]["temps"] == []
    # SIGKILL while the finished run strips optimizer state from last.pt: the unstripped epoch-2 file survives
    assert s["strip"]["rc"] == -9 and s["strip"]["ckpt"] == (2, True)
    # resuming that says so in one line instead of training again
    fin = s["finished"]
    assert fin["rc"] == 1 and "Traceback" not in fin["stderr"] and "nothing to resume" in fin["stderr"]


@pytest.mark.slow
def test_resume_after_faults_matches_uninterrupted_run(killed_runs: dict) -> None:
    ref, cut = killed_runs["ref"], killed_runs["cut"]
    assert rows(cut / "results.csv") == rows(ref / "results.csv") and len(rows(ref / "results.csv")) == 4
    a, b = (finished_weights(d / "weights/last.pt") for d in (ref, cut))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same weights, so the same masks
    pruned = [k for k in a if k.endswith("conv.weight") and not k.startswith("model.0.")]
    assert all(float((a[k] == 0).float().mean()) == pytest.approx(0.5, abs=0.01) for k in pruned)


@pytest.mark.slow
def test_best_pt_is_never_behind_last_pt(killed_runs: dict) -> None:
    """Epoch 0 always sets a best, so whenever a last.pt exists its best.pt must too, and end equal to the reference."""
    assert [name for name, step in killed_runs["steps"].items() if step["best"] is None] == []
    a = torch.load(killed_runs["ref"] / "weights/best.pt", weights_only=True)
    b = torch.load(killed_runs["cut"] / "weights/best.pt", weights_only=True)
    wa, wb = (finished_weights(killed_runs[r] / "weights/best.pt") for r in ("ref", "cut"))
    assert a["epoch"] == b["epoch"] and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_second_process_never_reads_a_partial_last_pt(killed_runs: dict) -> None:
    rep = killed_runs["reader"]
    assert rep["errors"] == [] and rep["loads"] > 0 and set(rep["epochs"]) <= {0, 1, 2}, rep
