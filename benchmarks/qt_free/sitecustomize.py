"""Hides napari and Qt from every Python process started with this folder on PYTHONPATH (dask's worker
processes too), to show that the core, the CLI and the benchmarks run without them (issue 24):

    PYTHONPATH=src:benchmarks/qt_free python -c "import napari_smlm_uq.inference.pipeline"

Importing a hidden module raises ModuleNotFoundError; the names are listed on stderr when the process ends.
"""
import atexit
import importlib.abc
import sys

HIDDEN = frozenset({"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy",
                    "app_model"})
blocked: list[str] = []


class _Hidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            blocked.append(name)
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by benchmarks/qt_free)", name=name)
        return None


def _report() -> None:
    if blocked:
        print(f"qt_free: blocked imports of {', '.join(sorted(set(blocked)))}", file=sys.stderr)


sys.meta_path.insert(0, _Hidden())
atexit.register(_report)
