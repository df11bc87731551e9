"""make demo's pipeline at toy scale: every user-facing script runs end to end on offline data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import demo


@pytest.mark.slow
def test_demo_pipeline_toy_scale(tmp_path: Path) -> None:
    s = demo.run(out=str(tmp_path / "demo"), imgsz=96, epochs=1, n_train=16, n_val=8, sparsity=(0.0, 0.5))
    out = Path(s["out"])
    assert (out / "train" / "weights" / "best.pt").is_file() and (out / "train" / "results.csv").is_file()
    assert [round(r["sparsity"], 2) for r in s["sweep"]] == [0.0, 0.5]
    assert Path(s["export"]["onnx"]).is_file() and len(list(Path(s["export"]["detect_dir"]).glob("*.jpg"))) == 4
    assert json.loads((out / "summary.json").read_text())["dense"].keys() == {"precision", "recall", "map50", "map"}
