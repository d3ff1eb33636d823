"""``smlm-uq evaluate``: JAC, RMSE and efficiency of localizations against the ground truth
(:class:`~analysis.metrics.ScoreSettings`)."""
from __future__ import annotations

import argparse
import json

from ..analysis.metrics import ScoreSettings
from ._options import add_options, settings

NAME, HELP = "evaluate", "JAC, RMSE, efficiency of localizations against ground truth"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("locs", help="localizations CSV (ThunderSTORM columns)")
    p.add_argument("gt", help="ground truth CSV (same columns)")
    add_options(p, ScoreSettings)
    p.add_argument("--json", action="store_true", help="one machine-readable JSON line")


def run(a: argparse.Namespace) -> int:
    from ..analysis.metrics import score, score_3d
    from ..io.tables import read_localizations, table_xy

    s = settings(ScoreSettings, a)
    locs, gt = read_localizations(a.locs), read_localizations(a.gt)
    axial = None
    if "z [nm]" in locs and "z [nm]" in gt:   # 3D: both tables have z
        r, axial = score_3d(locs["frame"], table_xy(locs), locs["z [nm]"], gt["frame"], table_xy(gt), gt["z [nm]"],
                            s.tolerance)
    else:
        r = score(locs["frame"], table_xy(locs), gt["frame"], table_xy(gt), s.tolerance)
    if a.json:
        print(json.dumps(r.as_dict() | (axial.as_dict() if axial else {})))
        return 0
    print(f"JAC {r.jaccard:.2f} %  RMSE {r.rmse:.2f} nm  E {r.efficiency:.2f}  precision {r.precision:.2f} %  "
          f"recall {r.recall:.2f} %  (TP {r.tp}, FP {r.fp}, FN {r.fn}, tolerance {s.tolerance:g} nm)")
    if axial:
        print(f"3D: RMSE z {axial.rmse_z:.2f} nm  E axial {axial.efficiency_axial:.2f}  "
              f"E 3D {axial.efficiency_3d:.2f} (mean of lateral and axial)")
    return 0
