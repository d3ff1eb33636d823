"""``smlm-uq predict`` into ``results.zarr`` in this process, or with ``--resume`` the frames an interrupted or
damaged run there still needs (inference/resumable.py); Ctrl-C or a failing folder keeps what was predicted."""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack

from ..inference.run import clear_outputs, write_results
from ..io.store import STORE_NAME
from .predict import flat_stack, progress_bar


def predict_into_store(a: argparse.Namespace, stack, job, models, choice, background, checks) -> int:
    """One stack into ``job.out/results.zarr``; the outputs beside it once every frame is in."""
    from ..inference.pipeline import keep_freed_buffers
    from ..inference.resumable import StoreRun

    if not (a.resume and (job.out / STORE_NAME).exists()):
        clear_outputs(job.out, a.overwrite)
    run = StoreRun.start(job, a.model, a.resume)
    if run.message:
        print(run.message)
    keep_freed_buffers()  # the CLI owns its process: keep freed activation buffers (benchmarks.md)
    t0 = time.perf_counter()
    try:
        with ExitStack() as files, run:
            bar = progress_bar(files, int(run.todo.sum()))
            for result in run.predict(stack.data, models):
                for note in result.notes:
                    bar.write(f"smlm-uq predict: {note}", file=sys.stderr)
                bar.update()
    except KeyboardInterrupt:
        print(f"smlm-uq predict: interrupted; {run.kept_count} of {len(job.frames)} frames are kept in {job.out}: "
              f"--resume completes the run", file=sys.stderr)
        raise
    seconds, n, lines = time.perf_counter() - t0, bar.n, []

    def write_outputs(total, locs) -> None:
        lines.append(write_results(job.out, job.source, job.frames, models.name, job.settings, total, locs, seconds,
                                   choice.as_dict(), background=background.as_dict(), warnings=checks.warnings,
                                   preflight=checks.as_dict()))
        lines.insert(0, f"{len(locs)} localizations in {len(job.frames)} frames -> {job.out}")
        lines.extend(flat_stack(locs, job.settings))
    run.complete(write_outputs)
    if n:
        print(f"{n} frames in {seconds:.1f} s ({seconds / n:.2f} s/frame)")
    print("\n".join(lines) or f"{job.out}: complete")
    return 0
