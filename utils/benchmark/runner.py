"""Timing harness: warm-up batches (not recorded), then exactly N measured batches (or S seconds), per-stage times.

sync: one caller, one batch at a time (batch 1 = latency). async: several streams each running the whole pipeline
concurrently on an engine that schedules parallel requests (DeepSparse multi-stream, OpenVINO THROUGHPUT).
pipelined: one engine, but pre-processing of the next batch and post-processing of the previous one run on the
calling thread while a second thread runs the engine (numpy, OpenCV and the engines release the GIL).
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .machine import ForeignLoadMeter

StageTimes = tuple[float, float, float]
Step = Callable[[list[np.ndarray]], tuple[Any, StageTimes]]


class Staged(Protocol):
    """A pipeline whose three stages can be called one by one (utils.benchmark.pipeline.Pipeline)."""

    def preprocess(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[tuple]]: ...

    def infer(self, x: np.ndarray) -> np.ndarray: ...

    def postprocess(self, pred: np.ndarray, meta: list[tuple]) -> list[np.ndarray]: ...


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


IN_FLIGHT = 2  # batches pre-processed but not yet through the engine: the one it runs and the next one


def run_pipelined(pipe: Staged, batches: Iterable[list[np.ndarray]]) -> Iterator[tuple[list[np.ndarray], StageTimes]]:
    """Detections and (pre, engine, post) ms per batch, in order, with the engine on its own thread.

    The calling thread pre-processes batch k+1 and post-processes finished batches while the engine thread runs
    batch k: pre + post hide behind the engine wherever cores allow. At most IN_FLIGHT batches wait for or are in
    the engine (bounded memory); every batch has its own input array, so results equal the plain loop's.
    """
    todo: queue.Queue = queue.Queue()
    done: queue.Queue = queue.Queue()
    free = threading.Semaphore(IN_FLIGHT)

    def engine_loop() -> None:
        while (item := todo.get()) is not None:
            k, x, meta, t_pre = item
            try:
                t0 = time.perf_counter()
                pred = pipe.infer(x)
                done.put((k, pred, meta, t_pre, (time.perf_counter() - t0) * 1e3))
            except BaseException as e:  # hand it to the caller, who re-raises it
                done.put((k, e, None, 0.0, 0.0))
            finally:
                free.release()

    def finish(item: tuple) -> tuple[list[np.ndarray], StageTimes]:
        k, pred, meta, t_pre, t_engine = item
        if isinstance(pred, BaseException):
            raise pred
        t0 = time.perf_counter()
        dets = pipe.postprocess(pred, meta)
        return dets, (t_pre, t_engine, (time.perf_counter() - t0) * 1e3)

    worker = threading.Thread(target=engine_loop, daemon=True)
    worker.start()
    submitted = finished = 0
    try:
        for images in batches:
            while not free.acquire(blocking=False):  # enough queued: post-process while the engine works
                yield finish(done.get())
                finished += 1
            t0 = time.perf_counter()
            x, meta = pipe.preprocess(images)
            todo.put((submitted, x, meta, (time.perf_counter() - t0) * 1e3))
            submitted += 1
            while not done.empty():  # results that are ready: post-process them before the next pre
                yield finish(done.get())
                finished += 1
        while finished < submitted:
            yield finish(done.get())
            finished += 1
    finally:
        todo.put(None)
        worker.join()


def measure_pipelined(pipe: Staged, images: list[np.ndarray], warmup: int = 25, iterations: int = 80,
                      time_s: float | None = None) -> Measurement:
    """Like measure_sync, batches through run_pipelined: items/sec is what counts (stage times overlap, so their
    sum per batch is more than the wall time per batch)."""
    m = Measurement(batch_size=len(images), warmup=warmup)
    for _ in run_pipelined(pipe, (images for _ in range(warmup))):
        pass
    with ForeignLoadMeter() as meter:
        start = time.perf_counter()

        def batches() -> Iterator[list[np.ndarray]]:
            n = 0
            while _more(n, iterations, time_s, start):
                n += 1
                yield images

        for _, t in run_pipelined(pipe, batches()):
            m.add(t)
    m.wall_s, m.foreign_load, m.own_cpu_share = meter.wall_s, meter.foreign, meter.own_cpu_share
    return m
