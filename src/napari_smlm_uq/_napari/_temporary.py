"""Run folders in the system's temporary folder (a run without an output folder), removed when Python exits
unless the user keeps them."""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

TEMPORARY: set[Path] = set()   # the run folders to remove when Python exits


@atexit.register
def remove_temporary() -> None:
    """Remove the temporary run folders (their layers read them until napari closes)."""
    for folder in TEMPORARY:
        shutil.rmtree(folder, ignore_errors=True)


def temporary_folder() -> Path:
    """A new run folder in the system's temporary folder (not yet marked for removal)."""
    return Path(tempfile.mkdtemp(prefix="smlm-uq-"))


def keep(folders: list[Path], kept: bool) -> None:
    """Keep ``folders`` when Python exits, or remove them then."""
    (TEMPORARY.difference_update if kept else TEMPORARY.update)(folders)
