"""``smlm-uq postprocess``: drift correction, merging of blinks, FRC resolution and Picasso export of a
localization table; options: the fields of postprocess.workflow's :class:`Settings`."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..postprocess.workflow import OUTPUTS, Settings
from ._options import add_options, settings

NAME, HELP = "postprocess", "drift correction, merging of blinks, FRC resolution, Picasso export"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("locs", help="localization table: our CSV, a ThunderSTORM CSV or a Picasso HDF5 (.hdf5)")
    p.add_argument("--out", required=True, help="output folder")
    add_options(p, Settings)
    p.add_argument("--fiducial", type=float, nargs=2, action="append", metavar=("X", "Y"),
                   help="a fiducial marker near x, y (nm); repeat for several: drift from the markers instead")
    p.add_argument("--picasso", action="store_true", help="also write locs.hdf5 + locs.yaml for Picasso")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")


def run(a: argparse.Namespace) -> int:
    from ..inference.run import output_folder
    from ..io.tables import read_table
    from ..postprocess import workflow

    s = settings(Settings, a, fiducials=np.array(a.fiducial, float) if a.fiducial else None)
    s.validate()
    out = output_folder(a.out, OUTPUTS, a.overwrite)
    table = read_table(a.locs, s.pixel_size)
    result = workflow.run(table, s)
    for name in OUTPUTS:
        (out / name).unlink(missing_ok=True)
    written = workflow.write(result, out, picasso=a.picasso, pixel_nm=s.camera_pixel,
                             source=str(Path(a.locs).resolve()))
    for line in workflow.summary_lines(len(table["frame"]), result):
        print(line)
    print(f"wrote {', '.join(p.name for p in written)} -> {out}")
    return 0
