"""Issue 19 hardening: code in data yamls, recipe eval bombs, model-size bombs, symlink loops, cache keys, run folders,
NaN loss, Ctrl-C, option checks and class-count mismatches. Security cases prove nothing ran (a marker file)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from tests.test_bad_input import _restore_process_state, cli, one_error_line, tiny_data  # noqa: F401  (autouse)
from utils.sparsity.recipes import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- 1. code in a data yaml's download:
def code_yaml(tmp: Path, marker: Path) -> Path:
    """A dataset yaml whose val folder is missing and whose download: is Python that would touch `marker`."""
    data = tmp / "evil.yaml"
    data.write_text(yaml.safe_dump({"path": str(tmp / "ds"), "train": "images", "val": "images", "names": ["a"],
                                    "download": f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"}))
    return data


@pytest.mark.parametrize("script", ["val.py", "train.py"])
def test_download_code_needs_opt_in(script, tmp_path, yolov5n_pt, capsys) -> None:
    marker = tmp_path / "pwned"
    code = cli(script, "--weights", yolov5n_pt, "--data", code_yaml(tmp_path, marker), "--img", 64, "--workers", 0,
               "--project", tmp_path / "runs")
    line = one_error_line(capsys)
    assert code in (1, 2) and "--allow-download-code" in line and "pathlib.Path(" in line, line
    assert not marker.exists() and not (tmp_path / "runs").exists()  # nothing ran, no run folder


def test_download_code_runs_with_opt_in(tmp_path) -> None:
    from utils.data_config import DatasetError, check_dataset
    marker = tmp_path / "ran"
    with pytest.raises(DatasetError, match="still missing"):  # it ran (touching the marker) but made no dataset
        check_dataset(code_yaml(tmp_path, marker), allow_code=True)
    assert marker.exists()


# ---------------------------------------------------------------------------------- 2. recipe eval(...) bounds
RECIPE = """
num_epochs: 4
modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: eval(num_epochs)
  - !GMPruningModifier
    init_sparsity: 0.05
    final_sparsity: 0.5
    start_epoch: 0
    end_epoch: {end}
    update_frequency: 0.5
    params: ["re:model.*.conv.weight"]
"""


@pytest.mark.parametrize("end, phrase", [
    ("eval(9**9**9)", "exponent 387420489 exceeds 64"),
    ("eval(2**60)", "2 ** 60 exceeds"),
    ("eval(round(5, -10**15))", "round() digits"),
    ("eval(__import__('os').system('touch {marker}'))", "is not allowed"),
    ("eval(num_epochs.__class__)", "unsupported syntax"),
    ("eval('a' * 10)", "not a real number"),
    ("eval(nope + 1)", "unknown variable 'nope'"),
])
def test_recipe_eval_is_bounded(end, phrase, tmp_path) -> None:
    marker = tmp_path / "pwned"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.replace("{end}", end.replace("{marker}", str(marker))))
    t = time.time()
    with pytest.raises(RecipeError) as e:
        load_recipe(recipe)
    msg = str(e.value)
    assert time.time() - t < 5 and "\n" not in msg and not marker.exists()
    assert str(recipe) in msg and "field 'end_epoch'" in msg and end.split("(")[0] in msg and phrase in msg, msg


def test_recipe_eval_within_bounds_still_works() -> None:
    rec = load_recipe(RECIPE.replace("{end}", "eval(max(1, round(num_epochs ** 2 / 8 - 1)))"))
    gmp = next(m for m in rec.modifiers() if type(m).__name__ == "GMPruningModifier")
    assert gmp.end_epoch == 1 and rec.manager.max_epochs == 4


def test_sparseml_eval_itself_is_bounded() -> None:
    """A recipe stored in a checkpoint reaches SparseML's from_yaml directly: its eval is bounded too."""
    from utils.compat import import_sparseml
    from utils.recipe_eval import ExpressionError
    t = time.time()
    with pytest.raises(ExpressionError, match="exceeds"):
        import_sparseml().from_yaml(RECIPE.replace("{end}", "eval(9**9**9)"))
    assert time.time() - t < 5


@pytest.mark.parametrize("args, phrase", [
    ('{"num_epochs": "abc"}', "--recipe-args num_epochs='abc': expected a number"),
    ('{"num_epochs": [1, 2]}', "expected a number"),
    ('{"num_epochs": "eval(9**99)"}', "variable 'num_epochs'"),
])
def test_recipe_args_wrong_type_is_one_line(args, phrase) -> None:
    with pytest.raises(RecipeError) as e:
        load_recipe(RECIPE.replace("{end}", "eval(num_epochs - 1)"), args)
    assert phrase in str(e.value) and "\n" not in str(e.value)


def test_recipe_eval_bomb_stops_train_in_one_line(tmp_path, yolov5n_pt, coco128_dir, capsys) -> None:
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(RECIPE.replace("{end}", "eval(9**9**9)"))
    code = cli("train.py", "--weights", yolov5n_pt, "--data", tiny_data(tmp_path, coco128_dir), "--recipe", recipe,
               "--project", tmp_path / "runs")
    line = one_error_line(capsys)
    assert code == 1 and str(recipe) in line and "eval(9**9**9)" in line
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------ 3. model-size bombs
@pytest.mark.parametrize("key, value, phrase", [
    ("width_multiple", 64, "width_multiple 64"),
    ("depth_multiple", 1000, "depth_multiple 1000"),
    ("channels", 10**12, "layer 1 Conv"),
    ("width_multiple", float("inf"), "unusable layer sizes"),
])
def test_model_yaml_size_is_bounded_before_building(key, value, phrase) -> None:
    from models.yolo import DetectionModel, load_yaml_cfg
    d = load_yaml_cfg("yolov5s.yaml")
    if key == "channels":
        d["backbone"][0][3][0] = value
    else:
        d[key] = value
    t = time.time()
    with pytest.raises(ValueError) as e:
        DetectionModel(d)
    assert time.time() - t < 2 and phrase in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_model_size_estimate_is_exact_for_the_official_sizes() -> None:
    from models.yolo import DetectionModel, check_model_size, load_yaml_cfg
    for size in "ns":
        model = DetectionModel(f"yolov5{size}.yaml")
        assert check_model_size(load_yaml_cfg(f"yolov5{size}.yaml")) == sum(p.numel() for p in model.parameters())


def test_stored_model_yaml_bomb_is_one_line(tmp_path, yolov5n_pt, coco128_dir, capsys) -> None:
    import torch
    from models.yolo import DetectionModel
    from utils.checkpoint import load_checkpoint, save_checkpoint
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "n.pt", DetectionModel("yolov5n.yaml")))
    ckpt["yaml"] = {**ckpt["yaml"], "width_multiple": 64}
    torch.save(ckpt, tmp_path / "bomb.pt")
    code = cli("val.py", "--weights", tmp_path / "bomb.pt", "--data", tiny_data(tmp_path, coco128_dir), "--img", 64,
               "--workers", 0, "--project", tmp_path / "runs")
    assert code == 2 and "over the 200M limit" in one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_given_model_yaml_bomb_stops_train_in_one_line(tmp_path, coco128_dir, capsys) -> None:
    from models.yolo import load_yaml_cfg
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(yaml.safe_dump({**load_yaml_cfg("yolov5n.yaml"), "depth_multiple": 1000}))
    code = cli("train.py", "--weights", "", "--cfg", cfg, "--data", tiny_data(tmp_path, coco128_dir), "--img", 64,
               "--workers", 0, "--project", tmp_path / "runs")
    assert code == 1 and "depth_multiple 1000" in one_error_line(capsys)


# ------------------------------------------------------------------------------- 4. symlink loops in image folders
def linked_folder(tmp: Path, coco128_dir: Path, links: list[tuple[str, str]]) -> Path:
    """images/ with 3 labelled coco128 images plus the given (link name, target) directory links."""
    import shutil
    (tmp / "images").mkdir(parents=True)
    (tmp / "labels").mkdir()
    for p in sorted((coco128_dir / "images/train2017").glob("*.jpg"))[:3]:
        shutil.copy(p, tmp / "images" / p.name)
        shutil.copy(coco128_dir / "labels/train2017" / f"{p.stem}.txt", tmp / "labels" / f"{p.stem}.txt")
    for name, target in links:
        (tmp / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, tmp / "images" / name)
    return tmp / "images"


@pytest.mark.parametrize("links, skipped", [
    ([("self", ".")], 1),  # one self-link: used to list every image many times over
    ([("a", "."), ("b", ".")], 2),  # two: used to hang the scan
    ([("sub/up", "../..")], 1),  # a link to an ancestor
])
def test_symlink_loops_are_not_followed(links, skipped, tmp_path, coco128_dir, caplog) -> None:
    from utils.dataloaders import LoadImagesAndLabels, list_image_files
    images = linked_folder(tmp_path, coco128_dir, links)
    t = time.time()
    files = list_image_files(images)
    assert time.time() - t < 5 and len(files) == 3, files
    assert f"skipped {skipped} directory links" in caplog.text
    assert len(LoadImagesAndLabels(str(images), 64, 2)) == 3


def test_links_to_one_image_count_once_and_outside_folders_count(tmp_path, coco128_dir) -> None:
    from utils.dataloaders import list_image_files
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "x.jpg").write_bytes(b"")
    images = linked_folder(tmp_path / "ds", coco128_dir, [("more", str(extra))])
    first = sorted(images.glob("*.jpg"))[0]
    os.symlink(first, images / "zz_same.jpg")
    files = list_image_files(images)
    assert len(files) == 4 and str(images / "more" / "x.jpg") in files and str(images / "zz_same.jpg") not in files


# ------------------------------------------------------------------------------------------ 5. label cache key
def test_label_edited_in_place_at_same_size_is_reread(tmp_path, coco128_dir) -> None:
    from utils.dataloaders import LoadImagesAndLabels
    images = linked_folder(tmp_path, coco128_dir, [])
    label = sorted((tmp_path / "labels").glob("*.txt"))[0]
    label.write_text("1 0.5 0.5 0.2 0.2\n")
    first = LoadImagesAndLabels(str(images), 64, 2)
    assert first.labels[0][0, 0] == 1 and (tmp_path / "labels.cache").is_file()
    st = label.stat()
    label.write_text("2 0.5 0.5 0.2 0.2\n")  # same size, new class
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # coarse clocks: make the change visible
    again = LoadImagesAndLabels(str(images), 64, 2)
    assert again.labels[0][0, 0] == 2


# ------------------------------------------------------------------------------------------------ 6. run folders
HOLD_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
from utils.files import claim_run_dir
claim_run_dir({path!r}, exist_ok=True)
print("held", flush=True)
time.sleep(60)
"""


def test_runs_started_at_once_get_their_own_folders(tmp_path) -> None:
    import subprocess
    import sys
    script = "import sys; sys.path.insert(0, sys.argv[1]); from utils.files import increment_path; " \
             "print(increment_path(sys.argv[2], mkdir=True))"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(ROOT), str(tmp_path / "exp")], stdout=subprocess.PIPE,
                              text=True) for _ in range(3)]
    dirs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert dirs == [str(tmp_path / n) for n in ("exp", "exp2", "exp3")]


def test_exist_ok_folder_of_a_live_run_is_refused(tmp_path, yolov5n_pt, bus_jpg, capsys) -> None:
    import subprocess
    import sys
    from utils.files import LOCK_NAME, RunDirBusy, claim_run_dir
    run = tmp_path / "runs" / "shared"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_SCRIPT.format(root=str(ROOT), path=str(run))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirBusy, match=f"in use by running process {holder.pid}"):
            claim_run_dir(run, exist_ok=True)
        code = cli("detect.py", "--weights", yolov5n_pt, "--source", bus_jpg, "--img", 64, "--project",
                   tmp_path / "runs", "--name", "shared", "--exist-ok")
        assert code == 2 and f"in use by running process {holder.pid}" in one_error_line(capsys)
        assert not (run / "bus.jpg").exists()
    finally:
        holder.kill()
        holder.wait()
    assert (run / LOCK_NAME).read_text() == str(holder.pid)  # killed: its lock is stale now
    assert claim_run_dir(run, exist_ok=True) == run  # and is taken over
    assert (run / LOCK_NAME).read_text() == str(os.getpid())


# ---------------------------------------------------------------------------------------- 7. NaN loss, 8. Ctrl-C
def train_args(tmp: Path, coco128_dir: Path, weights: Path, epochs: int) -> list[str]:
    return ["--weights", str(weights), "--data", str(tiny_data(tmp, coco128_dir)), "--img", "64", "--epochs",
            str(epochs), "--batch-size", "4", "--workers", "0", "--noplots", "--noval", "--noautoanchor",
            "--project", str(tmp / "runs")]


def test_nan_loss_stops_and_keeps_the_last_finite_checkpoint(tmp_path, coco128_dir, yolov5n_pt) -> None:
    import math

    import torch

    import train
    from utils.callbacks import Callback
    from utils.checkpoint import load_model
    from utils.trainer import TrainingDiverged

    class ObjLossGoesNaN(Callback):
        """From epoch 1 on, the objectness loss is NaN (as after a bad LR or a broken label)."""

        def on_train_batch_start(self, trainer) -> None:
            if trainer.epoch == 1 and not hasattr(trainer, "_orig_loss"):
                trainer._orig_loss = trainer.compute_loss

                def nan_obj(p, t):
                    loss, items = trainer._orig_loss(p, t)
                    return loss * math.nan, items * torch.tensor([1.0, math.nan, 1.0])
                trainer.compute_loss = nan_obj

    with pytest.raises(TrainingDiverged) as e:
        train.main(train.parse_opt(args=train_args(tmp_path, coco128_dir, yolov5n_pt, 3)), [ObjLossGoesNaN()])
    msg, last = str(e.value), tmp_path / "runs/exp/weights/last.pt"
    assert "\n" not in msg and msg.startswith("epoch 1 batch 0: obj_loss is not finite") and str(last) in msg, msg
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and all(torch.isfinite(p).all() for p in load_model(last).parameters())


def test_ctrl_c_prints_the_resume_command_and_exits_130(tmp_path, coco128_dir, yolov5n_pt) -> None:
    import signal
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "train.py", *train_args(tmp_path, coco128_dir, yolov5n_pt, 100000)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "runs/exp/weights/last.pt"
    deadline = time.time() + 300
    while not last.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    for _ in range(120):  # a person presses Ctrl-C again if the first one lands somewhere it is not seen
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=1)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == f"Interrupted: resume with: python train.py --resume {last}", err[-1500:]


# ------------------------------------------------------------------------------------- 9. impossible options
@pytest.mark.parametrize("script, args, phrase", [
    ("detect.py", ["--img", 0], "--img 0: image size must be between 1 and 8192"),
    ("detect.py", ["--img", -1], "--img -1:"),
    ("detect.py", ["--img", 100000], "--img 100000:"),
    ("val.py", ["--img", 0], "--img 0:"),
    ("val.py", ["--img", -1], "--img -1:"),
    ("val.py", ["--img", 100000], "--img 100000:"),
    ("val.py", ["--batch-size", 0], "--batch-size 0: must be at least 1"),
    ("train.py", ["--img", 0], "--img 0:"),
    ("train.py", ["--img", 100000], "--img 100000:"),
    pytest.param("detect.py", ["--device", "cuda:0"], "CUDA is not available",
                 marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a CPU-only build")),
    pytest.param("val.py", ["--device", "cuda:0"], "CUDA is not available",
                 marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a CPU-only build")),
])
def test_impossible_options_are_one_line_and_leave_no_folder(script, args, phrase, tmp_path, yolov5n_pt, bus_jpg,
                                                             coco128_dir, capsys) -> None:
    base = {"detect.py": ["--source", bus_jpg], "val.py": ["--data", tiny_data(tmp_path, coco128_dir), "--workers", 0],
            "train.py": ["--data", tiny_data(tmp_path, coco128_dir), "--workers", 0, "--epochs", 1]}[script]
    code = cli(script, "--weights", yolov5n_pt, *base, "--project", tmp_path / "runs", *args)
    line = one_error_line(capsys)
    assert code == (1 if script == "train.py" else 2) and phrase in line, line
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------- 10. nc mismatch
def test_val_refuses_a_model_with_another_class_count(tmp_path, yolov5n_pt, coco128_dir, capsys) -> None:
    data = tmp_path / "one.yaml"
    data.write_text(yaml.safe_dump({**yaml.safe_load(tiny_data(tmp_path, coco128_dir).read_text()), "names": ["a"]}))
    code = cli("val.py", "--weights", yolov5n_pt, "--data", data, "--img", 64, "--workers", 0,
               "--project", tmp_path / "runs")
    line = one_error_line(capsys)
    assert code == 2 and "model has 80 classes" in line and "nc=1" in line and str(data) in line, line
    assert not (tmp_path / "runs").exists()


def test_one_class_model_on_an_80_class_yaml_is_refused(tmp_path, coco128_dir, capsys) -> None:
    from models.yolo import DetectionModel
    from utils.checkpoint import save_checkpoint
    weights = save_checkpoint(tmp_path / "one.pt", DetectionModel("yolov5n.yaml", nc=1))
    code = cli("val.py", "--weights", weights, "--data", tiny_data(tmp_path, coco128_dir), "--img", 64, "--workers", 0,
               "--project", tmp_path / "runs")
    assert code == 2 and "model has 1 classes but" in one_error_line(capsys)


def test_detect_warns_about_classes_the_model_lacks(tmp_path, yolov5n_pt, bus_jpg, capsys) -> None:
    code = cli("detect.py", "--weights", yolov5n_pt, "--source", bus_jpg, "--img", 64, "--classes", 0, 999,
               "--project", tmp_path / "runs")
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "--classes" in ln]
    assert code == 0 and len(lines) == 1 and "--classes 999: not classes of this model (ids 0-79)" in lines[0]
