"""The z calibration's plot: the beads' widths against z, both models' curves and the valid range."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from ..io.files import atomic_path

if TYPE_CHECKING:
    from .zcalibration import ZCalibrationResult


def plot_calibration(result: ZCalibrationResult, path: str | os.PathLike) -> None:
    """PNG of the beads' widths against z, both models' curves (the one written thicker) and the valid
    range (atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    cal, beads = result.calibration, result.beads
    fig = Figure(figsize=(7, 4.2), dpi=120)
    ax = fig.add_subplot()
    ax.axvspan(*cal.z_range, color="0.93", label="valid range")
    for kept, style in ((True, {"alpha": 0.5}), (False, {"alpha": 0.35, "marker": "x", "color": "0.5"})):
        use = beads.valid & (beads.kept == kept)[:, None]
        if use.any():
            for s, colour, axis in ((beads.sigma_x, "tab:blue", "x"), (beads.sigma_y, "tab:red", "y")):
                ax.scatter(
                    beads.z[use],
                    s[use],
                    s=6,
                    **{"color": colour, **style},
                    label=f"sigma {axis}, beads" if kept else ("dropped beads" if axis == "x" else None),
                )
    used = beads.z[beads.valid & beads.kept[:, None]]
    grid = np.linspace(used.min(), used.max(), 400)
    written = cal.model == "huang2008"
    for huang, spline, colour, axis in zip(result.huang, result.splines, ("tab:blue", "tab:red"), "xy"):
        ax.plot(
            grid,
            huang.sigma(grid),
            color=colour,
            lw=2 if written else 1,
            label=f"sigma {axis}, Huang et al. 2008" + (" (written)" if written else ""),
        )
        ax.plot(
            grid,
            spline.sigma(grid),
            color="k",
            lw=1 if written else 2,
            ls="--",
            label=None if axis == "y" else "splines" + ("" if written else " (written)"),
        )
    r = cal.residuals
    ax.set(
        xlabel="z [nm]",
        ylabel="PSF sigma [px]",
        title=f"{r['beads_used']} of {r['beads_found']} beads; held-out rms: Huang {r['huang_heldout_rms_px']:.3f} px, "
        f"spline {r['spline_heldout_rms_px']:.3f} px",
        ylim=(0, None),
    )
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="upper center")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
