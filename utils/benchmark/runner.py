"""Timing harness: warm-up batches (not recorded), then exactly N measured batches (or S seconds), per-stage times.

sync: one caller, one batch at a time (batch 1 = latency). async: several streams each running the whole pipeline
concurrently on an engine that schedules parallel requests (DeepSparse multi-stream, OpenVINO THROUGHPUT).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .machine import ForeignLoadMeter

StageTimes = tuple[float, float, float]
Step = Callable[[list[np.ndarray]], tuple[Any, StageTimes]]


@dataclass
class Measurement:
    """Raw per-batch stage times of the measured iterations plus the window's wall time and foreign load."""

    batch_size: int
    warmup: int
    streams: int = 1
    pre: list[float] = field(default_factory=list)
    engine: list[float] = field(default_factory=list)
    post: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    foreign_load: float | None = None
    own_cpu_share: float | None = None

    @property
    def iterations(self) -> int:
        return len(self.pre)

    @property
    def total(self) -> np.ndarray:
        return np.asarray(self.pre) + np.asarray(self.engine) + np.asarray(self.post)

    def add(self, t: StageTimes) -> None:
        self.pre.append(t[0])
        self.engine.append(t[1])
        self.post.append(t[2])

    def summary(self) -> dict[str, float | int | None]:
        """items/sec over the measured wall time and ms/batch statistics of the end-to-end total."""
        tot = self.total
        if tot.size == 0:
            raise ValueError("no measured iterations")
        items = self.iterations * self.batch_size
        return {
            "iterations": self.iterations, "warmup": self.warmup, "streams": self.streams,
            "items_per_sec": items / self.wall_s if self.wall_s > 0 else float("nan"),
            "ms_mean": float(tot.mean()), "ms_median": float(np.median(tot)),
            "ms_p90": float(np.percentile(tot, 90)), "ms_p99": float(np.percentile(tot, 99)),
            "ms_std": float(tot.std(ddof=1)) if tot.size > 1 else 0.0,
            "pre_ms": float(np.mean(self.pre)), "engine_ms": float(np.mean(self.engine)),
            "post_ms": float(np.mean(self.post)), "wall_s": self.wall_s,
            "foreign_load": self.foreign_load, "own_cpu_share": self.own_cpu_share,
        }


def measure_sync(step: Step, images: list[np.ndarray], warmup: int = 25, iterations: int = 80,
                 time_s: float | None = None) -> Measurement:
    """One batch at a time. With time_s, measure until that many seconds have passed (at least one batch)."""
    m = Measurement(batch_size=len(images), warmup=warmup)
    for _ in range(warmup):
        step(images)
    with ForeignLoadMeter() as meter:
        start = time.perf_counter()
        while _more(m.iterations, iterations, time_s, start):
            m.add(step(images)[1])
    m.wall_s, m.foreign_load, m.own_cpu_share = meter.wall_s, meter.foreign, meter.own_cpu_share
    return m


def _more(done: int, iterations: int, time_s: float | None, start: float) -> bool:
    """Keep measuring? A count, or a time budget that always allows the first batch."""
    if time_s is None:
        return done < iterations
    return done == 0 or time.perf_counter() - start < time_s


class _Tickets:
    """Hands out exactly `iterations` measured slots across threads (or unlimited ones until time runs out)."""

    def __init__(self, iterations: int, time_s: float | None) -> None:
        self.iterations, self.time_s = iterations, time_s
        self.issued, self.lock = 0, threading.Lock()
        self.start = 0.0

    def take(self) -> bool:
        with self.lock:
            if not _more(self.issued, self.iterations, self.time_s, self.start):
                return False
            self.issued += 1
            return True


def measure_async(step: Step, images: list[np.ndarray], streams: int, warmup: int = 25, iterations: int = 80,
                  time_s: float | None = None) -> Measurement:
    """`streams` threads each run whole batches concurrently; warm-up is shared out, then N measured in total."""
    m = Measurement(batch_size=len(images), warmup=warmup, streams=streams)
    tickets = _Tickets(iterations, time_s)
    # the barrier's action runs once everyone has warmed up, before anyone is released: the clock starts there
    ready = threading.Barrier(streams + 1, action=lambda: setattr(tickets, "start", time.perf_counter()))
    results: list[list[StageTimes]] = [[] for _ in range(streams)]
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for _ in range(warmup // streams + (k < warmup % streams)):
                step(images)
        except BaseException as e:  # surface it in the caller instead of a silent thread death
            errors.append(e)
        ready.wait()
        while not errors and tickets.take():
            try:
                results[k].append(step(images)[1])
            except BaseException as e:
                errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(streams)]
    for t in threads:
        t.start()
    ready.wait()  # every stream warmed up; the measured window starts now
    with ForeignLoadMeter() as meter:
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    for r in results:
        for t in r:
            m.add(t)
    m.wall_s, m.foreign_load, m.own_cpu_share = meter.wall_s, meter.foreign, meter.own_cpu_share
    return m
