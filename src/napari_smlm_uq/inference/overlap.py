"""Host work off the network's critical path (issue 24): :func:`pipeline.predict`'s network passes (phi,
psi, the KDE statistics and peaks) run in a producer thread, up to :data:`DEPTH` psi batches ahead of the
frames handed to the caller, while the host thread localizes and refines the earlier batches and the caller
writes them. torch releases the GIL in its kernels, numpy and scipy in most of theirs. The host work
(:class:`HostWork`) runs in frame order in one thread while the refiner learns the PSF width and the single
emitters' photons frame after frame, then, once it has settled (from the start with the prior that
``predict`` learns before the first frame), in a pool (on a GPU: the CPU's cores are free); every frame
draws from its own random stream, so the results are those of the sequential path (``DEPTH = 0``,
``HOST_THREADS = 1``: each batch's network pass, host work and hand-over one after the other).

:class:`Timeline` records where the network thread's wall time goes, so a benchmark can report the
fraction of it the network waits on reading, host work and the caller.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress

DEPTH = 2   # psi batches the network may run ahead of the caller (each holds its frames' KDEs: bounded memory)
HOST_THREADS: int | None = None   # host threads once the refiner has settled; None: the cores beside a GPU, 1 on the
                                  # CPU (whose cores run the network)

Passes = Callable[[Callable[[], bool]], Iterator[list[Future]]]


class Timeline:
    """Seconds per stage of one prediction: ``read`` (frames from the stack), ``network`` (phi, psi, KDE
    statistics and peaks, up to their arrival on the host) and ``blocked`` (the network thread waiting for
    room ahead of the caller) on the network thread; ``host`` (the caller's thread waiting for a frame's
    localization and refinement) and ``caller`` (the caller's own work between frames, e.g. writing) on
    the caller's thread. ``wall`` spans the whole prediction."""

    def __init__(self):
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.start: float | None = None
        self.stop: float | None = None

    @contextmanager
    def span(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - t0

    @property
    def wall(self) -> float:
        return 0.0 if self.start is None or self.stop is None else self.stop - self.start

    def network_waiting(self) -> float:
        """The fraction of the wall time the network was not computing (waiting on reading, host work, the
        caller, or the end of the host work after its last pass)."""
        return max(0.0, 1.0 - self.seconds["network"] / self.wall) if self.wall > 0 else float("nan")

    def as_dict(self) -> dict:
        return {"wall_s": self.wall, **{f"{k}_s": v for k, v in sorted(self.seconds.items())},
                "network_waiting": self.network_waiting()}


def host_threads(device_type: str) -> int:
    """Threads for the host work of a network on ``device_type`` ("cpu" or "cuda"): :data:`HOST_THREADS`."""
    if HOST_THREADS is not None:
        return HOST_THREADS
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores if device_type == "cuda" else 1


class HostWork:
    """Runs the frames' host work (localization and refinement): in submission order in one thread while
    the refiner still learns from each frame, in a pool of ``threads`` once it has settled."""

    def __init__(self, threads: int):
        self.ordered = ThreadPoolExecutor(1, "smlm-uq host")
        self.pool = ThreadPoolExecutor(threads, "smlm-uq host pool") if threads > 1 else None

    def submit(self, settled: bool, fn, *args) -> Future:
        """``fn(*args)`` in order, or (``settled``: it depends on its own frame alone) in the pool."""
        return (self.pool if settled and self.pool else self.ordered).submit(fn, *args)

    def __enter__(self) -> HostWork:
        return self

    def __exit__(self, *exc) -> None:
        self.ordered.shutdown()
        if self.pool:
            self.pool.shutdown()


def in_order(passes: Passes, should_stop: Callable[[], bool], timeline: Timeline,
             depth: int | None = None) -> Generator:
    """The results of ``passes(stop)`` (an iterator of psi batches' host-work futures, stopping when
    ``stop()`` turns true) in order, with the passes running ``depth`` (default :data:`DEPTH`) batches ahead
    in a producer thread, or in this thread when 0. Checks ``should_stop`` after each result."""
    depth = DEPTH if depth is None else depth
    timeline.start = timeline.start or time.perf_counter()
    batches = passes(should_stop) if depth == 0 else _ahead(passes, should_stop, timeline, depth)
    try:
        for futures in batches:
            for future in futures:
                with timeline.span("host"):
                    result = future.result()
                with timeline.span("caller"):
                    yield result
                if should_stop():
                    return
    finally:
        batches.close()
        timeline.stop = time.perf_counter()


_DONE = object()


def _ahead(passes: Passes, should_stop: Callable[[], bool], timeline: Timeline,
           depth: int) -> Generator[list[Future], None, None]:
    """``passes`` run in a producer thread into a queue of ``depth`` batches; an exception there is raised
    here, in order. Closing this generator stops the producer (at its next check) and waits for it."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    halt = threading.Event()

    def produce() -> None:
        try:
            for futures in passes(lambda: halt.is_set() or should_stop()):
                with timeline.span("blocked"):
                    ready.put(futures)
            ready.put(_DONE)
        except BaseException as exc:   # handed to the caller's thread, raised there
            ready.put(exc)

    producer = threading.Thread(target=produce, name="smlm-uq network", daemon=True)
    producer.start()
    try:
        while (item := ready.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        halt.set()
        while producer.is_alive():   # drain, so that a producer blocked on a full queue sees the halt
            with suppress(queue.Empty):
                ready.get(timeout=0.05)
        producer.join()
