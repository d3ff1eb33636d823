"""Plot the Cramer-Rao lower bound per axis against photon count for several backgrounds.

Writes docs/img/crlb.png (PSF sigma 1 px, pixel 100 nm, read noise 1.5 e-, 11x11 ROI, emitter centred).
Run from the repository root:  python benchmarks/plot_crlb.py [output.png]
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from napari_smlm_uq.physics.crlb import crlb_nm

PSF_SIGMA, PIXEL_SIZE, READ_NOISE = 1.0, 100.0, 1.5
BACKGROUNDS = (0.0, 5.0, 20.0, 100.0)


def main(out: Path) -> None:
    photons = np.geomspace(200, 20000, 60)
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    for b in BACKGROUNDS:
        bound = [crlb_nm(n, b, PSF_SIGMA, PIXEL_SIZE, READ_NOISE) for n in photons]
        ax.plot(photons, bound, lw=2, label=f"b = {b:g} photons/px")
    sigma_a = PIXEL_SIZE * np.sqrt(PSF_SIGMA**2 + 1 / 12)
    ax.plot(photons, sigma_a / np.sqrt(photons), "k:", lw=1.2,
            label=r"$\sigma_a/\sqrt{N}$ (shot noise only)")
    ref = crlb_nm(2000, 20, PSF_SIGMA, PIXEL_SIZE, READ_NOISE)
    ax.plot([2000], [ref], "ko", ms=5)
    ax.annotate(f"{ref:.2f} nm\n(N = 2000, b = 20)", (2000, ref), xytext=(10, 12), textcoords="offset points",
                fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = [0.5, 1, 2, 5, 10, 20, 50]
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_yticks([], minor=True)
    ax.set_xticks([200, 500, 1000, 2000, 5000, 10000, 20000], ["200", "500", "1000", "2000", "5000", "10000", "20000"])
    ax.set_xticks([], minor=True)
    ax.set_ylim(0.6, 40)
    ax.set_xlabel("photons per emitter N")
    ax.set_ylabel("CRLB per axis (nm)")
    ax.set_title(f"Cramer-Rao bound: PSF $\\sigma$ = {PSF_SIGMA:g} px, pixel {PIXEL_SIZE:g} nm, "
                 f"read noise {READ_NOISE:g} e$^-$", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    print(f"wrote {out}")
    for b in BACKGROUNDS:
        print(f"b = {b:5g}: " + "  ".join(f"N={n:g}: {crlb_nm(n, b, PSF_SIGMA, PIXEL_SIZE, READ_NOISE):6.2f} nm"
                                         for n in (200, 500, 2000, 5000, 20000)))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "docs" / "img" / "crlb.png")
