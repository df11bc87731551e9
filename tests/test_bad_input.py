"""Bad input through the real scripts: one 'ERROR: <file>: <what> <fix>' line (never a traceback), or a counted skip.

Row- and file-level cases are unit-tested in test_labels/test_checkpoint/test_recipes/test_dataloaders/test_zoo; here
the same files go through train/val/detect/export/benchmark the way a user runs them. Error cases run the script's
`__main__` block in this process (runpy, so imports are paid once); cases whose output is logging run as subprocesses.
"""
from __future__ import annotations

import logging
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from models.yolo import DetectionModel
from utils.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
GOOD_ROW = "0 0.5 0.5 0.2 0.2\n"


@pytest.fixture(autouse=True)
def _restore_process_state():
    """Scripts run in this process switch on deterministic kernels and attach console handlers bound to the
    current (captured) stderr; leave the process as it was so the next test's output is not written to a closed file."""
    flags = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    loggers = [logging.getLogger(name) for name in (None, "yolov5-sparse", "utils")]
    saved = [(lg.handlers[:], lg.propagate, lg.level) for lg in loggers]
    yield
    torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
    for lg, (handlers, propagate, level) in zip(loggers, saved):
        lg.handlers[:], lg.propagate, lg.level = handlers, propagate, level


def cli(script: str, *args: object) -> int:
    """`python script args` in this process: returns the exit code; an uncaught exception (a traceback) propagates."""
    argv = sys.argv
    sys.argv = [str(ROOT / script), *map(str, args)]
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
        return 0
    except SystemExit as e:
        if isinstance(e.code, str):  # sys.exit("message"): Python prints it and exits 1
            print(e.code, file=sys.stderr)
            return 1
        return int(e.code or 0)
    finally:
        sys.argv = argv


def one_error_line(capsys) -> str:
    """The single ERROR line the script printed on stderr."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("ERROR")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


def tiny_data(tmp: Path, coco128_dir: Path, n: int = 4) -> Path:
    images = sorted((coco128_dir / "images/train2017").glob("*.jpg"))[:n]
    (tmp / "images.txt").write_text("".join(f"{p}\n" for p in images))
    data = tmp / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(tmp), "train": str(tmp / "images.txt"), "val": str(tmp / "images.txt"),
                                    "names": (coco128_dir / "classes.txt").read_text().splitlines()}))
    return data


class _Payload:
    """Pickles as a call to os.system: what a booby-trapped checkpoint looks like."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def bad(tmp_path_factory, yolov5n_pt: Path, coco128_dir: Path) -> dict[str, Path]:
    """One file per kind of unusable weights, plus a small dataset to point the scripts at."""
    tmp = tmp_path_factory.mktemp("bad_weights")
    files = {"data": tiny_data(tmp, coco128_dir), "marker": tmp / "pwned", "text": tmp / "notes.pt",
             "truncated": tmp / "cut.pt", "evil": tmp / "evil.pt", "other_arch": tmp / "mixed.pt",
             "not_onnx": tmp / "fake.onnx"}
    files["text"].write_text("hello, I am a text file\n")
    files["truncated"].write_bytes(yolov5n_pt.read_bytes()[:100_000])
    torch.save({"model": _Payload(files["marker"]), "epoch": 1}, files["evil"])
    ckpt = load_checkpoint(save_checkpoint(tmp / "n.pt", DetectionModel("yolov5n.yaml")))
    ckpt["yaml"] = DetectionModel("yolov5s.yaml").yaml  # yolov5n weights under a yolov5s description
    torch.save(ckpt, files["other_arch"])
    files["not_onnx"].write_bytes(b"\x08\x07garbage that is not a protobuf model" * 20)
    return files


def script_args(script: str, weights: Path, bad: dict, tmp: Path, bus_jpg: Path) -> list[object]:
    """The shortest command line of each script that gets as far as loading --weights."""
    return {"train.py": ["--weights", weights, "--data", bad["data"], "--img", 64, "--epochs", 1, "--workers", 0,
                         "--project", tmp / "train"],
            "val.py": ["--weights", weights, "--data", bad["data"], "--img", 64, "--workers", 0, "--project", tmp],
            "detect.py": ["--weights", weights, "--source", bus_jpg, "--img", 64, "--project", tmp],
            "export.py": ["--weights", weights, "--img", 64],
            "benchmark.py": ["--weights", weights, "--engines", "torch", "onnxruntime", "--img", 64, "--random",
                             "--warmup", 1, "--iterations", 1, "--project", tmp]}[script]


# --------------------------------------------------------------------------------------- weights files
@pytest.mark.parametrize("script", ["train.py", "val.py", "detect.py", "export.py", "benchmark.py"])
def test_malicious_pickle_is_refused_by_every_script(script, bad, tmp_path, bus_jpg, capsys) -> None:
    code = cli(script, *script_args(script, bad["evil"], bad, tmp_path, bus_jpg))
    line = one_error_line(capsys)
    assert code in (1, 2) and f"{bad['evil']}: refused to load" in line and "posix.system" in line
    assert not bad["marker"].exists()  # the payload never ran


@pytest.mark.parametrize("script, kind, phrase", [
    ("val.py", "text", "not a PyTorch checkpoint"),
    ("detect.py", "truncated", "not a PyTorch checkpoint"),
    ("export.py", "other_arch", "another architecture"),
    ("train.py", "text", "not a PyTorch checkpoint"),
    ("benchmark.py", "truncated", "not a PyTorch checkpoint"),
    ("val.py", "other_arch", "another architecture"),
])
def test_unusable_checkpoint_is_one_line(script, kind, phrase, bad, tmp_path, bus_jpg, capsys) -> None:
    code = cli(script, *script_args(script, bad[kind], bad, tmp_path, bus_jpg))
    line = one_error_line(capsys)
    assert code in (1, 2) and str(bad[kind]) in line and phrase in line
    if script == "val.py":  # nothing is written for a run that never started
        assert not any(tmp_path.glob("exp*"))


@pytest.mark.parametrize("script", ["val.py", "detect.py", "benchmark.py"])
def test_onnx_file_that_is_not_onnx(script, bad, tmp_path, bus_jpg, capsys) -> None:
    args = script_args(script, bad["not_onnx"], bad, tmp_path, bus_jpg)
    if script == "benchmark.py":
        args[args.index("torch")] = "onnxruntime"
    code = cli(script, *args)
    assert code in (1, 2) and str(bad["not_onnx"]) in one_error_line(capsys)


@pytest.mark.native_engines
@pytest.mark.parametrize("engine", ["deepsparse", "openvino"])
def test_onnx_file_that_is_not_onnx_native_engines(engine, bad, tmp_path, bus_jpg, capsys) -> None:
    code = cli("detect.py", "--weights", bad["not_onnx"], "--engine", engine, "--source", bus_jpg, "--img", 64,
               "--project", tmp_path)
    assert code in (1, 2) and str(bad["not_onnx"]) in one_error_line(capsys)


# ------------------------------------------------------------------------------------- --imgsz vs stride
def test_val_rounds_imgsz_up_with_a_warning(bad, yolov5n_pt, tmp_path, caplog) -> None:
    import val
    m = val.run(data=str(bad["data"]), weights=str(yolov5n_pt), imgsz=100, batch_size=4, workers=0,
                project=str(tmp_path), plots=False)
    assert "must be multiple of max stride 32, updating to 128" in caplog.text
    assert m["imgsz"] == 128


def test_benchmark_rounds_imgsz_up_with_a_warning(yolov5n_pt, tmp_path, caplog) -> None:
    import benchmark
    rep = benchmark.run(weights=[str(yolov5n_pt)], engines=["torch"], imgsz=[100, 90], random=True, warmup=1,
                        iterations=1, project=str(tmp_path))
    assert "must be multiple of max stride 32, updating to [128, 96]" in caplog.text
    assert [r["imgsz"] for r in rep["rows"]] == ["128x96"]


def test_export_rounds_imgsz_up_with_a_warning(yolov5n_pt, tmp_path, caplog) -> None:
    from utils.export import export_weights
    weights = tmp_path / "yolov5n.pt"
    shutil.copy(yolov5n_pt, weights)
    res = export_weights(weights, imgsz=100, verify=False, log=lambda *a: None)
    assert res["metadata"]["imgsz"] == [128, 128] and "updating to" in caplog.text


@pytest.mark.slow
def test_train_rounds_imgsz_up_with_a_warning(bad, yolov5n_pt, tmp_path) -> None:
    r = subprocess.run([sys.executable, "train.py", "--weights", str(yolov5n_pt), "--data", str(bad["data"]),
                        "--img", "100", "--epochs", "1", "--batch-size", "4", "--workers", "0", "--noplots",
                        "--noval", "--noautoanchor", "--project", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "--img-size 100 must be a multiple of 32, using 128" in out
    assert yaml.safe_load((tmp_path / "exp/opt.yaml").read_text())["imgsz"] == 100  # what the user asked, as given
    assert "Image sizes 128 train, 128 val" in out


# ------------------------------------------------------------------------------------------- data yaml
@pytest.mark.parametrize("text, phrase", [
    (b"train: \xff\xfe images\nval: images\n", "not a text file"),
    (b"train: images\nval: images\nnames: [person, null, car]\n", "key 'names' entry 1 is empty"),
    (b"train: images\nnames: [a]\n", "key 'val' is missing"),
    (b"train: images\nval: {a: 1}\nnames: [a]\n", "key 'val' must be a path string"),
    (b"train: [images\nval: x\n", "invalid YAML"),
])
def test_bad_data_yaml_is_one_line(text, phrase, yolov5n_pt, tmp_path, capsys) -> None:
    data = tmp_path / "data.yaml"
    data.write_bytes(text)
    code = cli("val.py", "--weights", yolov5n_pt, "--data", data, "--project", tmp_path / "runs")
    line = one_error_line(capsys)
    assert code == 2 and str(data) in line and phrase in line
    assert not (tmp_path / "runs").exists()  # a bad yaml leaves no empty run folder


# ------------------------------------------------------------------------------------- recipes in train
BASE_RECIPE = """
modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: 1
  - !GMPruningModifier
    init_sparsity: 0.05
    final_sparsity: 0.5
    start_epoch: 0
    end_epoch: 1
    update_frequency: 0.5
    params: ["re:model.*.conv.weight"]
"""


@pytest.mark.parametrize("name, change, phrases", [
    ("yaml_error", ("params: [", "params: [[ "), ["YAML error", "line"]),
    ("unknown_modifier", ("!GMPruningModifier", "!GMPrunningModifier"), ["unknown modifier 'GMPrunningModifier'"]),
    ("wrong_type", ("final_sparsity: 0.5", "final_sparsity: lots"), ["GMPruningModifier", "field 'final_sparsity'"]),
])
def test_broken_recipe_stops_train_before_any_work(name, change, phrases, bad, yolov5n_pt, tmp_path, capsys):
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(BASE_RECIPE.replace(*change))
    code = cli("train.py", "--weights", yolov5n_pt, "--data", bad["data"], "--recipe", recipe,
               "--project", tmp_path / "runs")
    line = one_error_line(capsys)
    assert code == 1 and str(recipe) in line and all(p in line for p in phrases), line
    assert not (tmp_path / "runs").exists()


def test_recipe_naming_missing_layers_stops_train(bad, yolov5n_pt, tmp_path, capsys) -> None:
    recipe = tmp_path / "layers.yaml"
    recipe.write_text(BASE_RECIPE.replace('["re:model.*.conv.weight"]', '["model.4.cv1.conv.weight", "model.99.conv"]'))
    code = cli("train.py", "--weights", yolov5n_pt, "--data", bad["data"], "--img", 64, "--workers", 0, "--noplots",
               "--noautoanchor", "--recipe", recipe, "--project", tmp_path / "runs")
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and err.startswith(f"ERROR: recipe {recipe}"), err[-3000:]
    assert "field 'params': model.99.conv" in err and "model.4.cv1.conv.weight" not in err  # names only the missing one
    assert not list((tmp_path / "runs").glob("*/weights/*.pt"))  # stopped before any training


# ------------------------------------------------------------------------------- a corpus through val.py
def build_corpus(root: Path, coco128_dir: Path) -> dict[str, str]:
    """4 good coco128 pairs plus one pair per bad case; returns {file stem: phrase its warning must contain}."""
    src = sorted((coco128_dir / "images/train2017").glob("*.jpg"))[:4]
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for p in src:
        shutil.copy(p, root / "images" / p.name)
        shutil.copy(coco128_dir / "labels/train2017" / f"{p.stem}.txt", root / "labels" / f"{p.stem}.txt")
    jpg = src[0].read_bytes()
    cases = {  # stem: (image bytes, label text, phrase in its one warning)
        "bad_header": (b"\x00" * 64 + jpg[64:], GOOD_ROW, "not an image file"),
        "truncated": (jpg[: len(jpg) // 2], GOOD_ROW, "truncated JPEG restored"),
        "zero_bytes": (b"", GOOD_ROW, "empty file (0 bytes)"),
        "text_file": (b"this is not a picture\n", GOOD_ROW, "not an image file"),
        "cols4": (jpg, "0 0.5 0.5 0.2\n", "4 columns"), "cols6": (jpg, "0 0.5 0.5 0.2 0.2 0.9\n", "6 columns"),
        "non_numeric": (jpg, "0 0.5 abc 0.2 0.2\n", "non-numeric"), "nan": (jpg, "0 nan 0.5 0.2 0.2\n", "NaN"),
        "inf": (jpg, "0 0.5 inf 0.2 0.2\n", "NaN or infinite"),
        "outside": (jpg, "0 1.5 0.5 0.2 0.2\n", "outside [0, 1]"), "zero_w": (jpg, "0 0.5 0.5 0 0.2\n", "non-positive"),
        "neg_h": (jpg, "0 0.5 0.5 0.2 -0.1\n", "non-positive"), "cls80": (jpg, "80 0.5 0.5 0.2 0.2\n", "nc=80"),
        "cls_neg": (jpg, "-1 0.5 0.5 0.2 0.2\n", "invalid class id -1"),
        "dups": (jpg, GOOD_ROW * 2, "duplicate label row"),
    }
    for stem, (image, label, _) in cases.items():
        (root / "images" / f"z_{stem}.jpg").write_bytes(image)
        (root / "labels" / f"z_{stem}.txt").write_text(label)
    (root / "images" / "z_empty_label.jpg").write_bytes(jpg)
    (root / "labels" / "z_empty_label.txt").write_text("")
    (root / "data.yaml").write_text(yaml.safe_dump({"path": str(root), "train": "images", "val": "images",
                                                    "names": (coco128_dir / "classes.txt").read_text().splitlines()}))
    return {f"z_{stem}": phrase for stem, (_, _, phrase) in cases.items()}


def val_cli(tmp_path: Path, weights: Path) -> subprocess.CompletedProcess:
    """val.py on the corpus as a user runs it (a subprocess: its console logging is what is checked)."""
    args = ["--weights", weights, "--data", tmp_path / "ds/data.yaml", "--img", 64, "--workers", 0,
            "--project", tmp_path / "runs"]
    return subprocess.run([sys.executable, "val.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_corpus_through_val_cli(tmp_path: Path, coco128_dir: Path, yolov5n_pt: Path) -> None:
    """Every bad file costs one warning naming it; val still scores the usable images and exits 0."""
    expect = build_corpus(tmp_path / "ds", coco128_dir)
    r = val_cli(tmp_path, yolov5n_pt)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Traceback" not in out, out[-3000:]
    warnings = [ln for ln in out.splitlines() if "WARNING" in ln]
    for stem, phrase in expect.items():
        mine = [w for w in warnings if f"/{stem}." in w]
        assert len(mine) == 1 and phrase in mine[0], (stem, mine)
    assert not any("z_empty_label" in w for w in warnings)  # an empty label file is a background image, not an error
    # 4 good + restored truncated JPEG + de-duplicated + empty label (background) = 7 images, 13 + 1 + 1 boxes
    row = next(ln.split() for ln in out.splitlines() if ln.split()[:1] == ["all"])
    assert row[1:3] == ["7", "15"], row


@pytest.mark.slow
def test_val_cli_prints_the_skip_counts(tmp_path: Path, coco128_dir: Path, yolov5n_pt: Path) -> None:
    build_corpus(tmp_path / "ds", coco128_dir)
    r = val_cli(tmp_path, yolov5n_pt)
    assert "val: 17 images, 1 backgrounds, 13 corrupt, 0 orphan labels" in r.stdout + r.stderr


@pytest.mark.slow
def test_corpus_through_train(tmp_path: Path, coco128_dir: Path, yolov5n_pt: Path) -> None:
    build_corpus(tmp_path / "ds", coco128_dir)
    r = subprocess.run([sys.executable, "train.py", "--weights", str(yolov5n_pt), "--data",
                        str(tmp_path / "ds/data.yaml"), "--img", "64", "--epochs", "1", "--batch-size", "4",
                        "--workers", "0", "--noplots", "--noautoanchor", "--project", str(tmp_path / "runs")],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Traceback" not in out, out[-3000:]
    assert "train: 17 images, 1 backgrounds, 13 corrupt, 0 orphan labels" in out  # 17 label files found (Ultralytics)
    assert (tmp_path / "runs/exp/weights/best.pt").is_file()


# ----------------------------------------------------------------------------------- detect and caches
def test_detect_skips_an_unreadable_image_in_a_folder(yolov5n_pt, bus_jpg, tmp_path, capsys, caplog) -> None:
    """One unreadable image is skipped with a warning naming it and the rest are detected; only a source with no
    readable image at all is an error (one line naming the file)."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(bus_jpg, src / "a_bus.jpg")
    (src / "b_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with caplog.at_level("WARNING"):
        code = cli("detect.py", "--weights", yolov5n_pt, "--source", src, "--img", 64, "--project", tmp_path / "runs")
    assert code == 0 and (tmp_path / "runs/exp/a_bus.jpg").is_file()
    assert any(str(src / "b_broken.jpg") in r.getMessage() for r in caplog.records)
    (src / "a_bus.jpg").unlink()
    code = cli("detect.py", "--weights", yolov5n_pt, "--source", src, "--img", 64, "--project", tmp_path / "runs")
    line = one_error_line(capsys)
    assert code == 2 and str(src / "b_broken.jpg") in line


def test_truncated_disk_cache_is_rebuilt(tmp_path: Path, coco128_dir: Path) -> None:
    from utils.dataloaders import LoadImagesAndLabels
    src = sorted((coco128_dir / "images/train2017").glob("*.jpg"))[:2]
    (tmp_path / "images").mkdir()
    for p in src:
        shutil.copy(p, tmp_path / "images" / p.name)
    ds = LoadImagesAndLabels(str(tmp_path / "images"), 64, 2, cache_images="disk")
    npy = ds.npy_files[0]
    npy.write_bytes(npy.read_bytes()[:1000])  # what a kill during np.save leaves behind
    again = LoadImagesAndLabels(str(tmp_path / "images"), 64, 2, cache_images="disk")
    assert again[0][0].shape[1:] == (64, 64) and np.load(npy, allow_pickle=False).shape[:2] == (480, 640)


@pytest.mark.parametrize("name, damage, kept", [
    ("scan_garbage", lambda b: b[: len(b) // 3] + bytes(range(256)) * (len(b) // 768) + b[2 * len(b) // 3:], True),
    ("headers_only", lambda b: b[:600] + b"\xff\xd9", False),
])
def test_jpeg_damaged_inside(name, damage, kept, tmp_path, coco128_dir) -> None:
    """Garbage inside the entropy-coded data still decodes (kept, like Ultralytics); no pixel data at all is dropped."""
    from utils.labels import verify_image_label
    jpg = (coco128_dir / "images/train2017/000000000009.jpg").read_bytes()
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "images" / f"{name}.jpg").write_bytes(damage(jpg))
    (tmp_path / "labels" / f"{name}.txt").write_text(GOOD_ROW)
    r = verify_image_label(str(tmp_path / "images" / f"{name}.jpg"), str(tmp_path / "labels" / f"{name}.txt"), 80)
    if kept:
        assert r.corrupt == 0 and r.shape == (480, 640) and len(r.labels) == 1
    else:
        assert r.corrupt == 1 and f"{name}.jpg" in r.msg and "corrupt image" in r.msg
