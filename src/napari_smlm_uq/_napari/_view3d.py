"""The viewer's dims for 3D localizations (``(z, frame, row, col)`` points, _layers.points_3d): the 3D view
shows (z, row, col) with every frame's localizations, the 2D view the current frame's, as for 2D results."""
from __future__ import annotations

Z_LABEL = "z"


def prepare_3d(viewer) -> None:
    """Order the dims so that the 3D view (``viewer.dims.ndisplay = 3``) shows z, rows and columns with the
    frame on the slider, and from then on widen the frame slider's margins over the whole movie in 3D (back to
    one frame in 2D). Call after adding 3D localizations; calling again changes nothing."""
    dims = viewer.dims
    frame = frame_axis(dims)
    if frame is None:
        return
    z, rows, cols = frame - 1, frame + 1, frame + 2
    order = [a for a in dims.order if a not in (z, frame, rows, cols)]
    dims.order = (*order, frame, z, rows, cols)
    dims.events.ndisplay.connect(follow_ndisplay)   # the same function: connected once
    follow_ndisplay(dims)


def frame_axis(dims) -> int | None:
    """The viewer's frame axis when it holds 3D localizations (z just before frame, row, col), else None."""
    frame = dims.ndim - 3
    return frame if frame >= 1 and dims.axis_labels[frame - 1] == Z_LABEL else None


def follow_ndisplay(event) -> None:
    """In 3D the frame slider's margins cover every frame (points project all frames in their margins), in
    2D none (the current frame). ``event``: napari's ndisplay event, or the dims."""
    dims = getattr(event, "source", event)
    frame = frame_axis(dims)
    if frame is None:
        return
    span = dims.range[frame].stop - dims.range[frame].start + 1 if dims.ndisplay == 3 else 0.0
    for side in ("margin_left", "margin_right"):
        margins = list(getattr(dims, side))
        margins[frame] = span
        setattr(dims, side, tuple(margins))
