"""The post-processing chain the CLI and the widget share: drift correction, merging of blinks, FRC (all
localizations and those kept by the uncertainty filter) on a ThunderSTORM-column table, and its files."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..defaults import PIXEL_SIZE_NM
from ..io.files import InputError, write_json
from ..settings import check, option
from . import drift as drift_
from . import frc as frc_
from .merge import merge

OUTPUTS = ("localizations.csv", "drift.csv", "frc.json", "locs.hdf5", "locs.yaml")
FILTER_MEDIANS = 1.5  # default uncertainty filter: keep localizations within this many median uncertainties
FrcSplit = Literal["blocks", "random"]


@dataclass
class Settings:
    """Which steps run (none unless asked for) and how. Frames, nm; ``max_uncertainty`` None: FILTER_MEDIANS x
    the median; ``fiducials`` (m, 2) x, y nm: drift from these markers instead of RCC + intersection."""

    drift: bool = option(False, help="estimate the drift (RCC + intersection, or from fiducials) and subtract it",
                         label="correct drift")
    merge: bool = option(False, help="merge the localizations of one blink into one event", label="merge blinks")
    frc: bool = option(False, help="FRC resolution of all and of the filtered localizations", label="FRC resolution")
    rcc_segment: int = option(1000, help="frames per RCC segment", unit="frames", low=1, label="RCC segment")
    segment: int = option(200, help="frames per segment of the intersection refinement", unit="frames", low=1,
                          label="refined segment")
    fiducials: np.ndarray | None = None
    max_gap: int = option(1, help="missing frames allowed inside one blink", unit="frames", low=0)
    max_sigmas: float = option(3.0, help="linking radius, in combined uncertainties", low=0.0, open_low=True,
                               label="linking radius")
    frc_pixel: float = option(5.0, help="FRC histogram pixel", unit="nm", low=0.0, open_low=True, label="FRC pixel")
    frc_split: FrcSplit = option("blocks", help="how the FRC halves are drawn", label="FRC split")
    frc_block: int = option(100, help="frames per block of the 'blocks' split", unit="frames", low=1,
                            label="FRC block")
    max_uncertainty: float | None = option(None, help=f"uncertainty filter (default: {FILTER_MEDIANS:g} x the median "
                                           "uncertainty)", unit="nm", low=0.0, open_low=True)
    pixel_size: float | None = option(None, help=f"camera pixel size of Picasso files (default: the file's, else "
                                      f"{PIXEL_SIZE_NM:g})", unit="nm", low=0.0, open_low=True)

    def validate(self) -> None:
        check(self)

    @property
    def camera_pixel(self) -> float:
        """The camera pixel (nm) of Picasso files: the one given, else the default."""
        return self.pixel_size or PIXEL_SIZE_NM


@dataclass
class Result:
    """The corrected (and merged) ``table``, ``kept`` (its rows that pass the uncertainty filter), the
    ``drift`` that was subtracted and the FRC of all rows and of the kept ones (None: step not run)."""

    table: dict[str, np.ndarray]
    kept: np.ndarray
    max_uncertainty: float
    drift: drift_.Drift | None = None
    frc: frc_.FRC | None = None
    frc_kept: frc_.FRC | None = None
    notes: list[str] = field(default_factory=list)


def check_table(table: dict[str, np.ndarray], settings: Settings) -> None:
    """One-line errors for a table the requested steps cannot use."""
    n = len(table.get("frame", ()))
    if n == 0:
        raise InputError("the table holds no localizations")
    if (settings.drift or settings.merge or settings.frc) and "uncertainty [nm]" not in table:
        raise InputError("the table has no 'uncertainty [nm]' column (needed for drift, merging and FRC)")
    if "uncertainty [nm]" in table and not np.all(table["uncertainty [nm]"] > 0):
        raise InputError("'uncertainty [nm]' must be > 0 and finite for every localization")
    if "uncertainty z [nm]" in table and np.any(np.asarray(table["uncertainty z [nm]"]) <= 0):
        raise InputError("'uncertainty z [nm]' must be > 0 (or NaN: z not fitted) for every localization")
    if (settings.drift or settings.merge) and len(np.unique(table["frame"])) < 2:
        raise InputError(f"all {n} localizations are in one frame: drift and merging need several frames")


def run(table: dict[str, np.ndarray], settings: Settings) -> Result:
    """Drift-correct, merge and measure the FRC of ``table`` (ThunderSTORM columns, 1-based frames)."""
    settings.validate()
    check_table(table, settings)
    out = {k: np.asarray(v, float) for k, v in table.items() if k != "id"}
    frame = out["frame"].astype(np.int64) - 1
    if frame.min() < 0:
        raise InputError("frames must be >= 1 (ThunderSTORM numbering)")
    drift = None
    if settings.drift:
        drift = _drift(frame, out, settings)
        out["x [nm]"], out["y [nm]"], out["uncertainty [nm]"] = drift_.correct(
            frame, out["x [nm]"], out["y [nm]"], out["uncertainty [nm]"], drift)
    if settings.merge:
        out = _merged(frame, out, settings)
    sigma = out.get("uncertainty [nm]")
    limit = float(FILTER_MEDIANS * np.median(sigma)) if settings.max_uncertainty is None and sigma is not None \
        else settings.max_uncertainty
    kept = np.ones(len(out["frame"]), bool) if sigma is None or limit is None else sigma <= limit
    result = Result(out, kept, float("nan") if limit is None else limit, drift)
    if settings.frc:
        half = frc_.halves(out["frame"] - 1, settings.frc_split, settings.frc_block)
        x, y = out["x [nm]"], out["y [nm]"]
        result.frc = frc_.frc(x, y, half, settings.frc_pixel)
        try:
            result.frc_kept = frc_.frc(x[kept], y[kept], half[kept], settings.frc_pixel)
        except InputError as exc:
            result.notes.append(f"FRC of the filtered localizations skipped: {exc}")
    return result


def _drift(frame: np.ndarray, table: dict[str, np.ndarray], s: Settings) -> drift_.Drift:
    args = (frame, table["x [nm]"], table["y [nm]"], table["uncertainty [nm]"])
    n_frames = int(frame.max()) + 1
    if s.fiducials is not None:
        return drift_.fiducial(*args, s.fiducials, n_frames)
    return drift_.estimate(*args, n_frames, s.rcc_segment, s.segment)


def _merged(frame: np.ndarray, table: dict[str, np.ndarray], s: Settings) -> dict[str, np.ndarray]:
    """One row per event (linked in 3D when the table has z and its uncertainty); other columns averaged over
    the event."""
    photons = table.get("intensity [photon]")
    ev = merge(frame, table["x [nm]"], table["y [nm]"], table["uncertainty [nm]"], photons, s.max_gap, s.max_sigmas,
               table.get("z [nm]"), table.get("uncertainty z [nm]"))
    out = {"frame": ev.first + 1.0, "x [nm]": ev.x, "y [nm]": ev.y, "uncertainty [nm]": ev.sigma,
           "frames": ev.frames.astype(float)}
    if ev.z is not None:
        out["z [nm]"], out["uncertainty z [nm]"] = ev.z, ev.sigma_z
    if photons is not None:
        out["intensity [photon]"] = ev.photons
    for k, v in table.items():
        if k not in out:
            out[k] = ev.mean_of(v)
    return out


def write(result: Result, out_dir: str | Path, picasso: bool = False, pixel_nm: float = PIXEL_SIZE_NM,
          source: str = "") -> list[Path]:
    """Write ``localizations.csv``, ``drift.csv``, ``frc.json`` and, with ``picasso``, ``locs.hdf5`` +
    ``locs.yaml`` (camera ``pixel_nm``) into ``out_dir``, each atomically; returns the paths written."""
    from ..io.picasso import write_locs
    from ..io.tables import write_localizations

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "localizations.csv"]
    write_localizations(written[0], result.table)
    if result.drift is not None:
        written.append(out / "drift.csv")
        write_localizations(written[-1], result.drift.table())
    if result.frc is not None:
        written.append(out / "frc.json")
        write_json(written[-1], {"all": result.frc.as_dict(), "max_uncertainty_nm": result.max_uncertainty,
                                 "filtered": None if result.frc_kept is None else result.frc_kept.as_dict(),
                                 "resolution_nm": result.frc.resolution_nm})
    if picasso:
        written.append(out / "locs.hdf5")
        written.append(write_locs(written[-1], result.table, pixel_nm, source=source))
    return written


def summary_lines(n_input: int, result: Result) -> list[str]:
    """What was done, for the command line and the widget."""
    lines = [f"{n_input} localizations -> {len(result.table['frame'])} rows"]
    d = result.drift
    if d is not None:
        span = np.ptp(np.stack([d.x, d.y], axis=1), axis=0)
        lines.append(f"drift ({d.method}): span x {span[0]:.1f} nm, y {span[1]:.1f} nm; median standard error "
                     f"{np.median(np.hypot(d.x_se, d.y_se) / np.sqrt(2)):.2f} nm")
    if "frames" in result.table:
        linked = " (linked in 3D)" if "uncertainty z [nm]" in result.table else ""
        lines.append(f"merged: {len(result.table['frames'])} events{linked}, {np.mean(result.table['frames']):.2f} "
                     f"localizations per event")
    if result.frc is not None:
        kept = "n/a" if result.frc_kept is None else f"{result.frc_kept.resolution_nm:.1f} nm"
        lines.append(f"FRC resolution {result.frc.resolution_nm:.1f} nm (all), {kept} (uncertainty <= "
                     f"{result.max_uncertainty:.1f} nm, {int(result.kept.sum())} rows)")
    return lines + result.notes
