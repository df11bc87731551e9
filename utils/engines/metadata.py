"""Model metadata (class names, stride, image size) carried inside exported files so no side file is needed."""
from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
import yaml

DEFAULT_STRIDE = 32
# ONNX tensor element types of the inputs our files take -> numpy dtypes (engines that read the file's input type)
ONNX_DTYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT8: np.int8,
               onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.DOUBLE: np.float64}


def parse_names(value: Any) -> list[str]:
    """Class names from a list, an {id: name} dict, or its JSON / Python-literal text (Ultralytics writes the latter)."""
    if value is None:
        return []
    if isinstance(value, str):
        value = _parse_text(value)
    if isinstance(value, Mapping):
        items = sorted(((int(k), str(v)) for k, v in value.items()), key=lambda kv: kv[0])
        return [v for _, v in items]
    return [str(v) for v in value]


def _parse_text(text: str) -> Any:
    """JSON first (what other tools write), then a Python literal (what Ultralytics' str(dict) writes)."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise ValueError(f"cannot parse class names from metadata text {text[:80]!r}...") from e


def parse_int_list(value: Any) -> list[int] | None:
    """'[640, 640]' / '640' / [640, 640] -> list of ints; None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = _parse_text(value)
    if isinstance(value, (int, float)):
        return [int(value)]
    return [int(v) for v in value]


def interpret(meta: Mapping[str, Any], nc: int | None = None) -> dict[str, Any]:
    """Normalise raw key/value metadata: names (list), stride (int), imgsz ([h, w] or None), the rest unchanged."""
    out = dict(meta)
    names = parse_names(meta.get("names"))
    if not names and nc:
        names = [f"class{i}" for i in range(nc)]
    out["names"] = names
    stride = parse_int_list(meta.get("stride"))
    out["stride"] = max(stride) if stride else DEFAULT_STRIDE
    imgsz = parse_int_list(meta.get("imgsz"))
    out["imgsz"] = [imgsz[0], imgsz[-1]] if imgsz else None
    return out


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """custom_metadata_map of an ONNX file, read without touching external weight data."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def onnx_metadata_props(meta: Mapping[str, Any]) -> dict[str, str]:
    """Stringify metadata for ONNX metadata_props; names as a Python-literal dict like Ultralytics, readable by both."""
    out = {}
    for k, v in meta.items():
        if k == "names" and isinstance(v, (list, tuple)):
            v = {i: n for i, n in enumerate(v)}
        out[k] = v if isinstance(v, str) else str(v)
    return out


def openvino_metadata_file(xml: Path) -> Path | None:
    """Side file next to an OpenVINO IR: <stem>.yaml (YOLOv5 convention) or metadata.yaml (Ultralytics 8)."""
    for cand in (xml.with_suffix(".yaml"), xml.parent / "metadata.yaml"):
        if cand.is_file():
            return cand
    return None


def read_yaml_metadata(path: Path | None) -> dict[str, Any]:
    """Metadata dict from a YAML side file; empty when there is none."""
    if path is None:
        return {}

    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of metadata (names, stride, ...), got {type(data).__name__}")
    return data


def nc_from_output_shape(shape: list[Any]) -> int | None:
    """Number of classes from a (B, N, 5+nc) output shape when the file has no names."""
    if len(shape) == 3 and isinstance(shape[-1], int) and shape[-1] > 5:
        return shape[-1] - 5
    return None
