"""Open an exported localization file with Picasso and render it (standalone, runs in Picasso's venv).

    .venv-picasso/bin/python benchmarks/picasso_open.py LOCS.hdf5 OUT.png OUT.json

Loads with ``picasso.io.load_locs`` (which applies Picasso's sanity checks), renders with
``picasso.render.render`` (``blur_method="gaussian"``: each localization blurred by its lpx, lpy) at 10 nm
display pixels, saves the image and writes {"picasso": version, "loaded": n, "columns": [...], ...}.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main(path: str, png: str, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from importlib.metadata import version

    from picasso import io, render

    locs, info = io.load_locs(path)
    n, image = render.render(locs, info, disp_px_size=10.0, blur_method="gaussian")
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(image, cmap="hot", vmax=float(image.max()) * 0.3)
    ax.set_title(f"Picasso {version('picassosr')} render of locs.hdf5 ({n} localizations)", fontsize=9)
    ax.axis("off")
    fig.savefig(png, dpi=110, bbox_inches="tight")
    pixel = [d["Pixelsize"] for d in info if "Pixelsize" in d][-1]
    with open(out, "w") as fh:
        json.dump({"picasso": version("picassosr"), "loaded": int(len(locs)), "rendered": int(n),
                   "columns": list(locs.columns), "image_shape": list(image.shape), "pixelsize_nm": pixel,
                   "median_lpx_nm": float(locs["lpx"].median() * pixel)}, fh, indent=2)


if __name__ == "__main__":
    main(*sys.argv[1:4])
