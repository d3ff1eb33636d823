"""The z calibration of the predict and training docks (docs/3d.md): a file field (empty: 2D), read as ``smlm-uq
predict --z-calibration`` and ``smlm-uq train --z-calibration`` read it, and the notes on a finished 3D run."""
from __future__ import annotations

from magicgui.widgets import FileEdit
from napari.utils.notifications import show_warning

from ..inference.refine3d import flat_warning
from ..io.zcalibration import read_zcalibration
from ..localizations import Localizations
from ..physics.astigmatism import ZCalibration


def z_calibration_field(purpose: str = "adds z [nm]") -> FileEdit:
    """A file field for a z calibration (empty: 2D); ``purpose``: what it does, for the tooltip."""
    return FileEdit(mode="r", nullable=True, filter="z calibrations (*.json)", label="z calibration",
                    tooltip="3D: an astigmatic calibration (smlm-uq calibrate-z, or 'Calibrate z from beads') "
                            f"measured at the pixel size here; {purpose}. Empty: 2D")


def read_z_field(field: FileEdit) -> ZCalibration | None:
    """The calibration of the field's file, None when empty; :class:`InputError` for a file that is not one."""
    return read_zcalibration(field.value) if field.value else None


def z_info(calibration: ZCalibration | None) -> dict:
    """What a 3D run keeps in its store: the calibration's valid z range (nm), the z colour scale's."""
    return {} if calibration is None else {"z_range": [float(v) for v in calibration.z_range]}


def z_notes(locs: Localizations, calibration: ZCalibration | None, z_range: tuple[float, float]) -> list[str]:
    """The lines a finished 3D run adds to the status: the z colour scale (``z_range``, nm) and, shown as a napari
    warning too, ``smlm-uq predict``'s warning when the spots show no astigmatism (a 2D stack?)."""
    if calibration is None:
        return []
    lines = [f"z colours: red {z_range[0]:.0f} nm to blue {z_range[1]:.0f} nm"]
    if warning := flat_warning(locs, calibration):
        show_warning(warning)
        lines.append(f"warning: {warning}")
    return lines
