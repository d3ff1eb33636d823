"""The models the widgets offer: bundled weights plus model files chosen or trained in this session.

No Qt here. The training widget calls :func:`register` with each model file it writes and the
prediction widget subscribes, so a freshly trained model appears in its list at once.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from pathlib import Path

from ..models import registry

BROWSE = "Browse…"
SCRATCH = "from scratch (random weights)"

_files: list[Path] = []
_listeners: list[Callable[[], Callable | None]] = []


def bundled() -> list[str]:
    """Names of the bundled models (empty until weights are installed)."""
    try:
        return registry.bundled_names()
    except (OSError, ValueError):  # an unreadable registry.json must not break the widgets
        return []


def register(path: str | Path) -> Path:
    """Add a model file to the lists of every open widget (most recent first); returns its path."""
    path = Path(path).expanduser().resolve()
    if path in _files:
        _files.remove(path)
    _files.insert(0, path)
    for ref in list(_listeners):
        callback = ref()
        try:
            if callback is None:
                raise RuntimeError("listener gone")
            callback()
        except RuntimeError as exc:  # garbage-collected, or a Qt widget already deleted
            if callback is not None and "deleted" not in str(exc):
                raise
            _listeners.remove(ref)
    return path


def subscribe(callback: Callable[[], None]) -> None:
    """Call ``callback()`` whenever a model file is registered (held weakly for bound methods)."""
    ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else (lambda: callback)
    _listeners.append(ref)


def choices() -> list[tuple[str, str]]:
    """``(label, value)`` pairs: bundled names (value = name), then files (value = path)."""
    out = [(name, name) for name in bundled()]
    out += [(f"{p.parent.name}/{p.name}", str(p)) for p in _files]
    return out


def label(value: str) -> str:
    """A short description of a model value for layer metadata and messages."""
    return value if value in bundled() else Path(value).name
