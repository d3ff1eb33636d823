"""Open an exported localization file with Picasso and render it (standalone, runs in Picasso's venv).

    .venv-picasso/bin/python benchmarks/picasso_open.py LOCS.hdf5 OUT.png OUT.json

Loads with ``picasso.io.load_locs`` (which applies Picasso's sanity checks), renders with
``picasso.render.render`` (``blur_method="gaussian"``: each localization blurred by its lpx, lpy) at 10 nm
display pixels, saves a 2 um crop rendered at 5 nm and writes {"picasso": version, "loaded": n, "columns": [...], ...}.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main(path: str, png: str, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from importlib.metadata import version

    import matplotlib.pyplot as plt
    import numpy as np
    from picasso import io, render

    locs, info = io.load_locs(path)
    n, image = render.render(locs, info, disp_px_size=10.0, blur_method="gaussian")
    cy, cx = float(locs["y"].median()), float(locs["x"].median())
    view = ((cy - 10, cx - 10), (cy + 10, cx + 10))  # 2 x 2 um around the centre, camera pixels
    _, crop = render.render(locs, info, disp_px_size=5.0, viewport=view, blur_method="gaussian")
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(crop, cmap="hot", vmax=float(np.quantile(crop[crop > 0], 0.99)), extent=(0, 2000, 2000, 0))
    ax.set_title(f"Picasso {version('picassosr')}: load_locs + render (2 um of {n} localizations)", fontsize=9)
    ax.set_xlabel("nm")
    fig.savefig(png, dpi=110, bbox_inches="tight")
    pixel = [d["Pixelsize"] for d in info if "Pixelsize" in d][-1]
    with open(out, "w") as fh:
        json.dump({"picasso": version("picassosr"), "loaded": int(len(locs)), "rendered": int(n),
                   "columns": list(locs.columns), "image_shape": list(image.shape), "pixelsize_nm": pixel,
                   "median_lpx_nm": float(locs["lpx"].median() * pixel)}, fh, indent=2)


if __name__ == "__main__":
    main(*sys.argv[1:4])
