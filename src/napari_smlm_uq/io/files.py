"""Files written atomically (``NAME.partial`` renamed into place when complete, so an interrupted run
never leaves a file that looks finished), JSON, and the error types for unusable input and failing output.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class InputError(ValueError):
    """Input that cannot be used, with a message a user can act on."""


class StorageError(RuntimeError):
    """The output folder failed during a run (a full disk, a folder that vanished): a one-line message naming
    the folder and what of the run is kept."""


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block completes."""
    path = Path(path)
    tmp = partial_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, obj: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=float) + "\n")
