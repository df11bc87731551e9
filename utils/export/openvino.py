"""ONNX -> OpenVINO IR folder with a YOLOv5-style metadata side file, written whole or not at all."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from utils.atomic import atomic_path
from utils.compat import import_openvino


def export_openvino(onnx_file: Path, metadata: dict[str, Any], out_dir: Path | None = None) -> Path:
    """ONNX -> OpenVINO IR folder (<stem>_openvino_model/<stem>.xml/.bin + <stem>.yaml metadata), weights kept f32."""
    ov = import_openvino()
    out_dir = out_dir or onnx_file.with_name(f"{onnx_file.stem}_openvino_model")
    with atomic_path(out_dir, what="OpenVINO export", folder=True) as tmp:
        xml = tmp / f"{onnx_file.stem}.xml"
        ov.save_model(ov.convert_model(str(onnx_file)), str(xml), compress_to_fp16=False)  # fp16 weights cost accuracy
        meta = dict(metadata)
        meta["names"] = {i: n for i, n in enumerate(meta.get("names", []))}  # YOLOv5's IR side-file layout
        with open(xml.with_suffix(".yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(meta, f, sort_keys=False)
    return out_dir
