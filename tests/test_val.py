"""val.py reproduces the Ultralytics v7.0 coco128 numbers, agrees with pycocotools, and sweeps sparsity."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import val
from utils.assets import ROOT

# Ultralytics v7.0 val.py, yolov5n.pt, coco128, --img 640 --conf-thres 0.001 --iou-thres 0.6 --batch-size 32
REFERENCE = {"precision": 0.621, "recall": 0.482, "map50": 0.553, "map": 0.352}


def coco128_yaml(tmp_path: Path, coco128_dir: Path, n: int | None = None) -> Path:
    """A data yaml pointing at the shared coco128 (optionally its first n images through a list file)."""
    names = (coco128_dir / "classes.txt").read_text().splitlines()
    val_split = "images/train2017"
    if n:
        images = sorted((coco128_dir / "images/train2017").glob("*.jpg"))[:n]
        listing = tmp_path / f"first{n}.txt"
        listing.write_text("".join(f"{p}\n" for p in images))
        val_split = str(listing)
    cfg = {"path": str(coco128_dir), "train": "images/train2017", "val": val_split, "names": names}
    path = tmp_path / "coco128.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_coco128_matches_ultralytics_and_pycocotools(tmp_path: Path, coco128_dir: Path, yolov5n_pt: Path) -> None:
    m = val.run(data=str(coco128_yaml(tmp_path, coco128_dir)), weights=str(yolov5n_pt), imgsz=640, batch_size=32,
                save_json=True, project=str(tmp_path), name="v", workers=0)
    assert (m["images"], m["instances"]) == (128, 929)
    for key, ref in REFERENCE.items():
        assert abs(m[key] - ref) <= 0.003, (key, m[key], ref)
    assert abs(m["coco_map"] - m["map"]) < 0.01 and abs(m["coco_map50"] - m["map50"]) < 0.01
    saved = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert saved["sparsity"] < 1e-5 and saved["engine"]["name"] == "torch"  # the official weights hold one exact zero


def test_deprecated_val_sparsity_alias_runs_the_prune_sweep(tmp_path: Path, coco128_dir: Path, yolov5n_pt: Path,
                                                            project_log) -> None:
    """val.py --sparsity still works for now: one line names the prune.py command, the sweep is prune.py's."""
    data = coco128_yaml(tmp_path, coco128_dir, n=8)
    res = val.main(val.parse_opt(["--data", str(data), "--weights", str(yolov5n_pt), "--img", "256", "--batch-size", "8",
                                  "--sparsity", "0,0.3,0.6", "--prune-method", "global", "layerwise",
                                  "--project", str(tmp_path), "--name", "s", "--workers", "0"]))
    assert "python prune.py --weights" in project_log.text
    assert "--sweep 0.0,0.3,0.6 --method global layerwise" in project_log.text
    for method in ("global", "layerwise"):
        rows = res[method]
        assert [round(r["sparsity"], 2) for r in rows] == [0.0, 0.3, 0.6]
        assert rows[0]["rel_map50"] == 1.0 and rows[0]["map50"] > 0.3
    with open(tmp_path / "s" / "sparsity_map.csv") as f:
        assert len(list(csv.DictReader(f))) == 6
    assert (tmp_path / "s" / "sparsity_map.png").stat().st_size > 10_000


def test_save_txt_and_verbose(tmp_path: Path, coco128_dir: Path, yolov5n_pt: Path, capsys) -> None:
    data = coco128_yaml(tmp_path, coco128_dir, n=4)
    val.run(data=str(data), weights=str(yolov5n_pt), imgsz=320, batch_size=4, save_txt=True, save_conf=True,
            verbose=True, project=str(tmp_path), name="t", workers=0)
    txts = list((tmp_path / "t" / "labels").glob("*.txt"))
    assert len(txts) == 4 and all(len(ln.split()) == 6 for ln in txts[0].read_text().splitlines())
    out = capsys.readouterr().out
    assert "all" in out and "zebra" in out  # per-class rows with --verbose


def test_bad_data_yaml_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: images\nnames: 3\n")
    r = subprocess.run([sys.executable, "val.py", "--data", str(bad), "--weights", "x.pt"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "bad.yaml" in r.stderr
