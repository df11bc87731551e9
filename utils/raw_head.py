"""Detect's decode on the host, for files exported with `--head raw`: only cells that pass objectness get decoded.

The in-graph decode (sigmoid of every value, grid and anchor math, a transpose and a concat of B x 25200 x 85
floats at 640) costs the engine ~5 ms per image whatever the model; NMS then throws nearly all of it away.
A raw-head file ends at Detect's three 1x1 convs; here objectness alone is squashed and thresholded, and only
the surviving cells are decoded, with the same float32 operations as Detect._decode.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

HEAD_KEY = "head"  # metadata key; value "raw" marks a file whose outputs are Detect's conv maps


def sigmoid(x: np.ndarray) -> np.ndarray:
    """float32 logistic, without overflow warnings for very negative logits."""
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-x, dtype=np.float32))).astype(np.float32, copy=False)


@dataclass
class RawHead:
    """What decoding needs: anchors in pixels per level (nl, na, 2), each level's stride, the class count."""

    anchors: np.ndarray
    strides: np.ndarray
    nc: int

    @property
    def na(self) -> int:
        return int(self.anchors.shape[1])

    @property
    def no(self) -> int:
        return self.nc + 5

    def metadata(self) -> dict[str, str]:
        """Keys an exported file carries so any engine can decode it."""
        return {HEAD_KEY: "raw", "anchors": json.dumps(self.anchors.tolist()),
                "strides": json.dumps([int(s) for s in self.strides]), "nc": str(self.nc)}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> "RawHead | None":
        """The head of a raw-head file; None for files whose output is already decoded."""
        if str(meta.get(HEAD_KEY, "")) != "raw":
            return None
        anchors = np.asarray(_load(meta["anchors"]), np.float32)
        return cls(anchors, np.asarray(_load(meta["strides"]), np.float32), int(meta["nc"]))

    @classmethod
    def from_detect(cls, detect: Any) -> "RawHead":
        """From a Detect module (anchors are stored in grid units there)."""
        stride = detect.stride.detach().cpu().float().numpy()
        anchors = detect.anchors.detach().cpu().float().numpy() * stride[:, None, None]
        return cls(anchors.astype(np.float32), stride.astype(np.float32), int(detect.nc))

    def cells(self, level: int, ny: int, nx: int) -> int:
        """Prediction rows one level contributes per image (na * ny * nx)."""
        return self.na * ny * nx

    def decode(self, level: int | np.ndarray, v: np.ndarray, a: np.ndarray, y: np.ndarray,
               x: np.ndarray) -> np.ndarray:
        """Raw logits (K, no) of cells (level, anchor a, row y, col x) -> xywh pixels and sigmoid scores, as
        Detect._decode; `level` is one level or each row's."""
        s = sigmoid(v)
        out = np.empty_like(s)
        grid = np.stack((x, y), 1).astype(np.float32) - np.float32(0.5)
        out[:, :2] = (s[:, :2] * np.float32(2) + grid) * np.reshape(self.strides[level], (-1, 1))
        out[:, 2:4] = (s[:, 2:4] * np.float32(2)) ** 2 * self.anchors[level, a]
        out[:, 4:] = s[:, 4:]
        return out


@dataclass
class RawPrediction:
    """An engine's raw-head outputs: per level (B, na * no, ny, nx) conv maps, decoded lazily."""

    maps: list[np.ndarray]
    head: RawHead

    @property
    def shape(self) -> tuple[int, int, int]:
        """The (B, N, 5 + nc) shape the decoded prediction would have."""
        n = sum(self.head.cells(i, *m.shape[2:4]) for i, m in enumerate(self.maps))
        return (self.maps[0].shape[0], n, self.head.no)

    def _levels(self):
        """(level, logits viewed as (B, na, no, ny, nx), first row of the level in the decoded order)."""
        start = 0
        for i, m in enumerate(self.maps):
            b, _, ny, nx = m.shape
            yield i, m.reshape(b, self.head.na, self.head.no, ny, nx), start
            start += self.head.cells(i, ny, nx)

    def candidates(self, conf_thres: float) -> tuple[np.ndarray, np.ndarray]:
        """Decoded rows whose objectness > conf_thres and their image index, in the decoded tensor's row order.

        Objectness logits are compared with the threshold's logit (no exp over every cell), widened by a margin
        and re-checked through the sigmoid on the few survivors, so the cells are exactly those sigmoid(x) > conf
        selects. Each survivor's no values are read with one flat gather (a strided fancy index over a batch of
        64 cost 4x more)."""
        found = []
        cut = _logit(conf_thres)
        for i, v, _ in self._levels():
            b, a, y, x = np.nonzero(v[:, :, 4] > cut)
            found.append((np.full(len(b), i), b, a, y, x, self._gather(v, b, a, y, x)))
        level, b, a, y, x, cells = (np.concatenate(c) for c in zip(*found))
        ok = sigmoid(cells[:, 4]) > conf_thres
        if not ok.all():
            level, b, a, y, x, cells = level[ok], b[ok], a[ok], y[ok], x[ok], cells[ok]
        order = np.argsort(b, kind="stable")  # image-major, then level, anchor, y, x: the decoded row order
        return self.head.decode(level, cells, a, y, x)[order], b[order]

    @staticmethod
    def _gather(v: np.ndarray, b: np.ndarray, a: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """(K, no) logits of cells (b, a, y, x) from a (B, na, no, ny, nx) view of a contiguous map."""
        _, na, no, ny, nx = v.shape
        if not v.flags.c_contiguous:  # a flat view would copy the whole map: index it as it is
            return v[b, a, :, y, x]
        base = ((b * na + a) * no) * (ny * nx) + y * nx + x
        return v.reshape(-1).take(base[:, None] + np.arange(no) * (ny * nx))

    def dense(self) -> np.ndarray:
        """The whole (B, N, 5 + nc) decoded prediction, as the in-graph decode gives it (checks and tools)."""
        out = np.empty(self.shape, np.float32)
        for i, v, start in self._levels():
            b, na, no, ny, nx = v.shape
            a, y, x = (g.ravel() for g in np.meshgrid(np.arange(na), np.arange(ny), np.arange(nx), indexing="ij"))
            cells = v.transpose(0, 1, 3, 4, 2).reshape(b, -1, no)
            for j in range(b):
                out[j, start:start + len(a)] = self.head.decode(i, cells[j], a, y, x)
        return out


def _logit(p: float, margin: float = 1e-4) -> float:
    """A logit just below the one sigmoid maps to p: every cell that passes p passes it (-inf for p <= 0)."""
    if p <= 0:
        return -np.inf
    if p >= 1:
        return np.inf
    return float(np.log(p / (1 - p))) - margin


def as_dense(pred: np.ndarray | RawPrediction) -> np.ndarray:
    """A decoded (B, N, 5 + nc) array whatever the engine returned."""
    return pred.dense() if isinstance(pred, RawPrediction) else pred


def _load(value: Any) -> Any:
    """Metadata values arrive as JSON text from files, or as lists when passed in directly."""
    return json.loads(value) if isinstance(value, str) else value
