"""``smlm-uq demo``: simulate a small stack, predict it with the bundled model, score it, draw a figure."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..inference.pipeline import PredictSettings
from ..inference.run import RunSettings
from ._options import add_options, settings

NAME, HELP = "demo", "simulate, predict with the bundled model, score, draw a figure"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="smlm-uq-demo", help="folder for demo.png and demo.json")
    add_options(p, RunSettings, only=("model",))
    add_options(p, PredictSettings, only=("samples", "steps", "device"))


def run(a: argparse.Namespace) -> int:
    from .. import demo
    from ..io.files import atomic_path, write_json

    s = settings(PredictSettings, a).validate()
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = demo.run(s, a.model)
    for line in demo.summary_lines(result):
        print(line)
    with atomic_path(out_dir / "demo.png") as tmp:
        demo.figure(result, tmp)
    write_json(out_dir / "demo.json", {k: result[k]["report"] for k in ("phi", "pipeline")}
               | {"pixels": result["pipeline"]["pixels"], "crlb_nm": result["crlb_nm"]})
    print(f"figure: {out_dir / 'demo.png'}")
    return 0
