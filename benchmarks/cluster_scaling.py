"""Cluster scaling (docs/benchmarks.md, docs/cluster.md): throughput of ``predict`` on a dask LocalCluster of
1 and 2 worker processes (1 thread each) against one process, and the scheduling cost per frame for chunks
of 8-256 frames; from them, what 8 GPU workers would give.

    PYTHONPATH=src python benchmarks/cluster_scaling.py [--frames 256] [--size 32] [--samples 0]

phi alone (``--samples 0``) with the bundled default model: the cheapest frame, so the scheduling cost shows
most. Every run writes its frames into a result store (io/store.py), in one process too, so the difference
is dask's alone. Writes ``benchmarks/results/cluster_scaling.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_smlm_uq.inference import distributed as dist
from napari_smlm_uq.inference.pipeline import PredictSettings, keep_freed_buffers, predict
from napari_smlm_uq.io.store import ResultStore
from napari_smlm_uq.io.tiff import open_stack, write_stack
from napari_smlm_uq.models import registry
from napari_smlm_uq.physics.simulate import SimulationSettings, simulate

ROOT = Path(__file__).resolve().parents[1]
CHUNKS = (8, 16, 32, 64, 128, 256)
GPU_SECONDS_PER_FRAME = {"phi alone, 64x64": 1 / 2000, "default pipeline, 64x64": 1 / 100,
                         "default pipeline, 256x256": 1 / 8}   # issue 12's H100 targets (not measured here)


def one_process(source: Path, frames: int, settings: PredictSettings, folder: Path, threads: int) -> dict:
    """Wall seconds for all frames in this process (``threads`` torch threads), writing the store as a worker
    does, and the seconds the pipeline itself reports (the rest: reading, writing)."""
    torch.set_num_threads(threads)
    models, stack = registry.load("default"), open_stack(source).data
    store = ResultStore.create(folder, frames, stack.shape[1:], settings.pixel_size, check_space=False)
    t0, compute = time.perf_counter(), 0.0
    for r in predict(stack, models, settings, range(frames)):
        store.write_frame(r.index, r.mean, r.std, r.sample)
        compute += r.seconds
    return {"wall_s": time.perf_counter() - t0, "compute_s": compute}


def on_cluster(client, source: Path, frames: int, shape: tuple[int, int], settings: PredictSettings, folder: Path,
               chunk: int) -> dict:
    """Wall seconds from submitting the chunks to the complete stack (the workers are warm), the seconds the
    pipeline reports on the workers, and the seconds the workers spent in the chunk tasks (dask's own record)."""
    from distributed import get_task_stream

    job = dist.StackJob(source, range(frames), shape, settings, folder)
    t0, compute = time.perf_counter(), 0.0
    with get_task_stream(client=client) as stream:
        for item in dist.predict_on_cluster(client, [job], "default", chunk_frames=chunk):
            if isinstance(item, dist.StackFailed):
                raise RuntimeError(item.error)
            compute += item.seconds if isinstance(item, dist.ChunkDone) else 0.0
    wall = time.perf_counter() - t0
    tasks = sum(s["stop"] - s["start"] for t in stream.data for s in t["startstops"] if s["action"] == "compute")
    return {"wall_s": wall, "compute_s": compute, "task_s": tasks, "chunks": len(stream.data)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=256)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--samples", type=int, default=0)
    a = p.parse_args()
    keep_freed_buffers()
    settings = PredictSettings(samples=a.samples, device="cpu")
    tmp = Path(tempfile.mkdtemp(prefix="cluster_scaling_"))
    sim = simulate(SimulationSettings(frames=a.frames, size=a.size, density=0.5, seed=9105))
    source = tmp / "stack.tif"
    write_stack(source, sim.adu.astype(np.float32), settings.pixel_size)
    shape = (a.size, a.size)
    runs = iter(range(10**6))
    folder = lambda: tmp / f"run{next(runs)}"
    result = {"frames": a.frames, "size": a.size, "samples": a.samples, "model": "default",
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
              "torch": torch.__version__}
    one_process(source, 16, settings, folder(), 1)   # warm-up
    result["one_process_1_thread"] = one_process(source, a.frames, settings, folder(), 1)
    result["one_process_all_threads"] = one_process(source, a.frames, settings, folder(), os.cpu_count())
    torch.set_num_threads(1)
    print(f"one process: {a.frames / result['one_process_1_thread']['wall_s']:.1f} frames/s (1 thread), "
          f"{a.frames / result['one_process_all_threads']['wall_s']:.1f} (all threads)")
    for workers in (1, 2):
        t0 = time.perf_counter()
        client = dist.connect(workers=workers)
        result[f"startup_{workers}_workers_s"] = time.perf_counter() - t0
        try:
            on_cluster(client, source, 4 * workers, shape, settings, folder(), 1)   # loads the model on each worker
            chunks = CHUNKS if workers == 1 else (dist.DEFAULT_CHUNK_FRAMES,)
            result[f"{workers}_workers"] = {c: on_cluster(client, source, a.frames, shape, settings, folder(), c)
                                           for c in chunks}
        finally:
            dist.close(client)
        print(f"{workers} workers:", {c: f"{a.frames / r['wall_s']:.1f} frames/s"
                                      for c, r in result[f"{workers}_workers"].items()})
    # dask's cost: the wall time of a 1-worker run outside its tasks (submitting, scheduling, sending the
    # results back, keeping them), timed against dask's record of the same run so the load of a shared machine
    # mostly cancels; and the worker's own cost per frame outside the pipeline (reading the stack, writing the
    # store), the same in one process
    one = result["1_workers"]
    result["dask_cost_per_chunk_s"] = {c: (r["wall_s"] - r["task_s"]) / r["chunks"] for c, r in one.items()}
    result["dask_cost_per_frame_s"] = {c: (r["wall_s"] - r["task_s"]) / a.frames for c, r in one.items()}
    io = result["one_process_1_thread"]
    per_chunk = float(np.median(list(result["dask_cost_per_chunk_s"].values())))
    per_frame_io = (io["wall_s"] - io["compute_s"]) / a.frames
    result["cost_model"] = {"dask_per_chunk_s": per_chunk, "worker_io_per_frame_s": per_frame_io}
    c = dist.DEFAULT_CHUNK_FRAMES
    # 8 workers, each a GPU computing t s/frame, reading/writing as measured here, dask's cost per chunk
    result["prediction_8_gpu_workers"] = {
        name: {"frames_per_s_one_gpu_alone": 1 / t,
               "frames_per_s_8_workers": 8 / (t + per_frame_io + per_chunk / c),
               "frames_per_s_8_workers_without_io": 8 / (t + per_chunk / c),
               "chunk_frames": c}
        for name, t in GPU_SECONDS_PER_FRAME.items()}
    out = ROOT / "benchmarks" / "results" / "cluster_scaling.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(tmp)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
