"""``smlm-uq predict --workers N`` or ``--scheduler ADDRESS``: every stack's chunks on one dask cluster
(inference/distributed.py); a stack that fails is reported, the others complete."""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from ..inference.run import RunSettings, clear_outputs, write_results
from ..io.files import InputError
from .predict import failure, flat_stack, load_model, prepare_stack, progress_bar, report_failures


def predict_on_cluster(a: argparse.Namespace, options: RunSettings, sources: list[Path]) -> int:
    from ..inference import distributed as dist

    jobs, failures, choices, many = [], [], {}, len(sources) > 1
    models = load_model(a)
    for source in sources:
        out = Path(a.out) / source.stem if many else Path(a.out)
        try:
            stack, frames, s, choice, background, checks = prepare_stack(a, source, out, models)
            print("\n".join(f"{source.name}: {m}" for m in [*choice.messages, background.describe(),
                                                            *(f"warning: {w}" for w in checks.stack)]))
            jobs.append(dist.StackJob(source.resolve(), frames, stack.shape[1:], s, out, options.store_encoding))
            choices[source.resolve()] = choice.as_dict(), background.as_dict(), checks
        except InputError as exc:
            failures.append(failure(source, exc))
    for job in jobs:
        clear_outputs(job.out, a.overwrite)
    client = dist.connect(options.scheduler, options.workers)
    t0 = time.perf_counter()
    try:
        with ExitStack() as files:
            bar = progress_bar(files, sum(len(r) for job in jobs for r in job.chunks(options.chunk_frames)))
            for item in dist.predict_on_cluster(client, jobs, options.model, options.chunk_frames, options.resume):
                if isinstance(item, dist.ChunkDone):
                    for note in item.notes:
                        bar.write(f"smlm-uq predict: {item.job.source.name}: {note}", file=sys.stderr)
                    bar.update(len(item.frames))
                elif isinstance(item, dist.StackFailed):
                    failures.append(f"{item.job.source}: {item.error}")
                else:
                    seconds = time.perf_counter() - t0
                    check = finish_stack(item, models.name, seconds, options, *choices[item.job.source])
                    bar.write(f"{item.job.source.name}: {len(item.job.frames)} frames, "
                              f"{len(item.localizations)} localizations -> {item.job.out}; {check}", file=sys.stdout)
                    for line in flat_stack(item.localizations, item.job.settings):
                        bar.write(f"{item.job.source.name}: {line}", file=sys.stdout)
    except KeyboardInterrupt:
        print("smlm-uq predict: interrupted; finished chunks are kept: --resume completes the run", file=sys.stderr)
        raise
    finally:
        dist.close(client)
    return report_failures(failures)


def finish_stack(done, model: str, seconds: float, options: RunSettings, camera: dict, background: dict,
                 checks) -> str:
    """A complete stack on the cluster (its KDEs in results.zarr): the other outputs."""
    cluster = {"scheduler": options.scheduler or f"local, {options.workers} workers",
               "chunk_frames": options.chunk_frames, "worker_seconds": done.seconds}
    return write_results(done.job.out, done.job.source, done.job.frames, model, done.job.settings, done.sums,
                         done.localizations, seconds, camera, cluster=cluster, background=background,
                         warnings=checks.warnings, preflight=checks.as_dict())
