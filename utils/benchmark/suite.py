"""Runs the benchmark grid (batch size x variant x engine x scenario), one row each, never aborting on one failure."""
from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from utils.engines import load_engine
from utils.engines.base import Engine, EngineUnavailable

from .accuracy import AccuracyProbe, gzip_mb
from .machine import FOREIGN_LOAD_WARN
from .pipeline import Pipeline, fill_batch
from .runner import measure_async, measure_pipelined, measure_sync
from .streams import ASYNC_ENGINES, NoAsync, default_streams, load_stream_engine
from .variants import NotApplicable, Variant


@dataclass
class Settings:
    """How every row is measured; the same for all rows so they compare."""

    imgsz: tuple[int, int] = (640, 640)
    warmup: int = 25
    iterations: int = 80
    time_s: float | None = None
    num_cores: int | None = None
    num_streams: int | None = None
    conf_thres: float = 0.25
    iou_thres: float = 0.45
    max_det: int = 1000
    openvino_precision: str = "f32"
    device: str = "cpu"
    head: str = "raw"
    pixels: str | None = None  # None: float NCHW input; "NCHW RGB" / "NHWC BGR": uint8 pixels (utils.export.pixels)


def open_engine(weights: Any, engine: str, batch_size: int, scenario: str, s: Settings, cores: int) -> Engine:
    """Sync: the shared loader. Async: the multi-stream subclasses (NoAsync for engines without streams)."""
    options = {"precision": s.openvino_precision} if engine == "openvino" else {}
    if scenario == "async":
        streams = s.num_streams or (default_streams(cores) if engine == "deepsparse" else None)
        return load_stream_engine(weights, engine, batch_size, s.imgsz, s.num_cores, streams, **options)
    return load_engine(weights, engine, batch_size=batch_size, imgsz=s.imgsz, num_threads=s.num_cores,
                       device=s.device, **options)


def base_row(v: Variant, engine: str, batch_size: int, scenario: str, s: Settings) -> dict[str, Any]:
    return {"model": v.group, "variant": v.name, "sparsity": v.sparsity, "pattern": v.pattern,
            "precision": v.precision, "engine": engine, "engine_version": "", "batch_size": batch_size,
            "scenario": scenario, "streams": None, "threads": None, "imgsz": f"{s.imgsz[0]}x{s.imgsz[1]}",
            "status": "ok", "note": "", "int8_kernels": None}


def row_accuracy(probe: AccuracyProbe, v: Variant, engine: str, eng: Engine, batch_size: int, scenario: str,
                 s: Settings, workdir: Path, cores: int) -> dict[str, Any]:
    """mAP of the batch-1 file of (variant, engine): measured with the batch-1 sync row's engine, reused after."""
    hit = probe.cached(v, engine)
    if hit is not None:
        return hit
    if batch_size != 1 or scenario != "sync":
        eng = open_engine(v.weights_for(engine, 1, s.imgsz, workdir), engine, 1, "sync", s, cores)
    return probe.measure(v, engine, eng, tuple(eng.imgsz or s.imgsz))


def measure_row(v: Variant, engine: str, batch_size: int, scenario: str, images: list[np.ndarray], s: Settings,
                workdir: Path, cores: int, probe: AccuracyProbe | None = None) -> dict[str, Any]:
    """One timed row (and with a probe, the mAP of what it timed); n/a, unavailable and error rows keep their
    reason in `note`."""
    row = base_row(v, engine, batch_size, scenario, s)
    try:
        if scenario == "async" and engine not in ASYNC_ENGINES:  # say so before paying for an export
            raise NoAsync(f"{engine} has no multi-stream scheduler (async is DeepSparse/OpenVINO only)")
        weights = v.weights_for(engine, batch_size, s.imgsz, workdir)
        eng = open_engine(weights, engine, batch_size, scenario, s, cores)
        pipe = Pipeline(eng, s.imgsz, s.conf_thres, s.iou_thres, s.max_det)
        batch = fill_batch(images, batch_size)
        streams = getattr(eng, "num_streams", None) or 1
        if scenario == "async":
            m = measure_async(pipe, batch, streams, s.warmup, s.iterations, s.time_s)
        elif scenario == "pipelined":
            m = measure_pipelined(pipe, batch, s.warmup, s.iterations, s.time_s)
        else:
            m = measure_sync(pipe, batch, s.warmup, s.iterations, s.time_s)
        info = eng.info()
        if v.precision == "INT8":  # an INT8 file pays only where the backend's kernels are INT8: say how many
            row["int8_kernels"] = eng.int8_kernels()
        row.update(m.summary(), engine_version=info["version"], threads=info.get("threads"),
                   imgsz=f"{pipe.imgsz[0]}x{pipe.imgsz[1]}")
        row["streams"] = streams if scenario == "async" else 1
        row["pre_post_share"] = (row["pre_ms"] + row["post_ms"]) / row["ms_mean"] if row.get("ms_mean") else None
        with contextlib.suppress(OSError):  # a size is a nicety: the timing stands without it
            row["size_gzip_mb"] = gzip_mb(weights)
        if m.foreign_load is not None and m.foreign_load > FOREIGN_LOAD_WARN:
            row["note"] = f"foreign CPU load {m.foreign_load:.0%} > {FOREIGN_LOAD_WARN:.0%}: timing unreliable"
        if probe is not None:  # after the timing: validation never overlaps a measured window
            try:
                row.update(row_accuracy(probe, v, engine, eng, batch_size, scenario, s, workdir, cores))
            except Exception as e:  # the timing stands; the row says why its accuracy is missing
                row["note"] = "; ".join(x for x in (row["note"], f"accuracy: {type(e).__name__}: {e}") if x)
    except (NotApplicable, NoAsync) as e:
        row.update(status="n/a", note=str(e))
    except EngineUnavailable as e:
        row.update(status="unavailable", note=str(e))
    except Exception as e:  # one broken engine/file must not lose the other rows
        row.update(status="error", note=f"{type(e).__name__}: {e}")
    return row


def run_grid(variants: list[Variant], engines: list[str], batch_sizes: list[int], scenarios: list[str],
             images: list[np.ndarray], s: Settings, workdir: Path, cores: int,
             log: Callable[[str], None] = print, probe: AccuracyProbe | None = None) -> list[dict[str, Any]]:
    """Every combination, batch size outermost so latency rows come first, as in the seed tables."""
    rows = []
    for bs in batch_sizes:
        for v in variants:
            for engine in engines:
                for scenario in scenarios:
                    row = measure_row(v, engine, bs, scenario, images, s, workdir, cores, probe)
                    gc.collect()  # the finished engine and its thread pool go before the next row is timed
                    rows.append(row)
                    log(_progress(row))
    return rows


def _progress(row: dict[str, Any]) -> str:
    """One line per finished row so a long run shows it is alive."""
    head = f"  {row['variant']} | {row['engine']} | batch {row['batch_size']} | {row['scenario']}: "
    if row["status"] != "ok":
        return head + f"{row['status']} ({row['note']})"
    load = row.get("foreign_load")
    acc = f", mAP50 {row['map50']:.3f}" if row.get("map50") is not None else ""
    return head + (f"{row['items_per_sec']:.2f} items/s, {row['ms_mean']:.1f} ms/batch{acc}"
                   + (f", foreign load {load:.1%}" if load is not None else ""))
