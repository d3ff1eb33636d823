"""Calibration of the localization uncertainty: one scale per local context.

The spread of a localization's matching peaks across the diffusion samples tracks its error, but
not with one constant factor: near the frame edge (part of the PSF outside the camera), beside close
neighbours and at low signal-to-noise, the models err more than their samples disagree. The
calibrated uncertainty is ``raw * scale[edge bin, neighbour bin, SNR bin]``, each scale fitted on
simulated validation stacks as the spread of ``error / raw uncertainty`` in that context, so that
calibrated ``error / uncertainty`` has unit spread in every context.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

EDGE_BINS = (1.0, 2.0)         # raw pixels from the frame edge: [0, 1), [1, 2), >= 2
NEIGHBOUR_RADIUS = 8.0         # raw pixels: the local density around a localization
NEIGHBOUR_BINS = (2, 4)        # other localizations within the radius: 0-1, 2-3, >= 4 (~2/um^2 at 100 nm px)
SNR_BINS = (25.0, 50.0)        # peak pixel SNR (preprocessing.pixel_snr): < 25, 25-50, >= 50
MIN_COUNT = 40                 # localizations a context needs for its own scale (else a coarser one: fit)


def context(rows: np.ndarray, cols: np.ndarray, snr: np.ndarray, shape: tuple[int, int], edge_bins=EDGE_BINS,
            radius: float = NEIGHBOUR_RADIUS, neighbour_bins=NEIGHBOUR_BINS,
            snr_bins=SNR_BINS) -> tuple[np.ndarray, ...]:
    """Edge, neighbour and SNR bins of each localization of one frame (raw-pixel ``rows``/``cols``,
    pixel centres at integers; peak ``snr``; frame ``shape`` in raw pixels)."""
    rows, cols = np.asarray(rows, float), np.asarray(cols, float)
    h, w = shape
    edge = np.minimum.reduce([rows + 0.5, cols + 0.5, h - 0.5 - rows, w - 0.5 - cols])
    counts = np.zeros(len(rows), int)
    if len(rows) > 1:
        tree = cKDTree(np.column_stack([rows, cols]))
        counts = np.array([len(n) - 1 for n in tree.query_ball_point(tree.data, radius)])
    return np.digitize(edge, edge_bins), np.digitize(counts, neighbour_bins), np.digitize(snr, snr_bins)


def frame_context(frames: np.ndarray, rows: np.ndarray, cols: np.ndarray, snr: np.ndarray, shape: tuple[int, int],
                  **bins) -> tuple[np.ndarray, ...]:
    """:func:`context` of localizations from many frames (``frames``: each one's frame index)."""
    frames, snr = np.asarray(frames), np.asarray(snr, float)
    rows, cols = np.asarray(rows, float), np.asarray(cols, float)
    bins_of = np.zeros((3, len(rows)), int)
    for f in np.unique(frames):
        sel = frames == f
        bins_of[:, sel] = context(rows[sel], cols[sel], snr[sel], shape, **bins)
    return tuple(bins_of)


def _shape(edge_bins, neighbour_bins, snr_bins) -> tuple[int, int, int]:
    return len(edge_bins) + 1, len(neighbour_bins) + 1, len(snr_bins) + 1


@dataclass
class Calibration:
    """Scales ``[edge bin, neighbour bin, SNR bin]`` applied to raw uncertainties."""

    scales: np.ndarray = field(default_factory=lambda: np.ones(_shape(EDGE_BINS, NEIGHBOUR_BINS, SNR_BINS)))
    edge_bins: tuple[float, ...] = EDGE_BINS
    radius: float = NEIGHBOUR_RADIUS
    neighbour_bins: tuple[int, ...] = NEIGHBOUR_BINS
    snr_bins: tuple[float, ...] = SNR_BINS

    @classmethod
    def uniform(cls, scale: float) -> Calibration:
        return cls(np.full(_shape(EDGE_BINS, NEIGHBOUR_BINS, SNR_BINS), float(scale)))

    @classmethod
    def from_dict(cls, d: dict | None) -> Calibration:
        """From a model's stored calibration: ``{}`` (none: scale 1), a single ``uncertainty_scale``
        (older models) or the per-context table written by :meth:`to_dict`."""
        d = d or {}
        if "scales" not in d:
            return cls.uniform(d.get("uncertainty_scale", 1.0))
        return cls(np.asarray(d["scales"], float), tuple(d["edge_bins_px"]), float(d["neighbour_radius_px"]),
                   tuple(d["neighbour_bins"]), tuple(d["snr_bins"]))

    def to_dict(self) -> dict:
        return {"scales": self.scales.tolist(), "edge_bins_px": list(self.edge_bins),
                "neighbour_radius_px": self.radius, "neighbour_bins": list(self.neighbour_bins),
                "snr_bins": list(self.snr_bins)}

    def bins(self, frames: np.ndarray, rows: np.ndarray, cols: np.ndarray, snr: np.ndarray,
             shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
        """Each localization's context bins (:func:`frame_context` with this calibration's bins)."""
        return frame_context(frames, rows, cols, snr, shape, edge_bins=self.edge_bins, radius=self.radius,
                             neighbour_bins=self.neighbour_bins, snr_bins=self.snr_bins)

    def factors(self, frames: np.ndarray, rows: np.ndarray, cols: np.ndarray, snr: np.ndarray,
                shape: tuple[int, int]) -> np.ndarray:
        """The scale of each localization (raw-pixel ``rows``/``cols`` in frames of ``shape``)."""
        return self.scales[self.bins(frames, rows, cols, snr, shape)]

    @classmethod
    def fit(cls, z: np.ndarray, bins: tuple[np.ndarray, ...], min_count: int = MIN_COUNT) -> Calibration:
        """Scales from raw normalised errors ``z`` (``(n, 2)``: x and y error / raw uncertainty) and each
        localization's context ``bins`` (edge, neighbours, SNR): the spread of ``z`` per context. A
        context with fewer than ``min_count`` localizations takes that of its (edge, SNR) pair pooled
        over neighbours, else of its edge bin, else the pooled spread."""
        z = np.asarray(z, float)
        ok = np.isfinite(z).all(axis=1)
        z, (edge, neighbours, snr) = z[ok], (np.asarray(b)[ok] for b in bins)
        if not len(z):
            raise ValueError("no matched localizations with an uncertainty to calibrate on")
        cal = cls.uniform(np.std(z))
        n_edge, n_neighbours, n_snr = cal.scales.shape
        for e in range(n_edge):
            if (edge == e).sum() >= min_count:
                cal.scales[e] = np.std(z[edge == e])
            for k in range(n_snr):
                pair = (edge == e) & (snr == k)
                if pair.sum() >= min_count:
                    cal.scales[e, :, k] = np.std(z[pair])
                for n in range(n_neighbours):
                    sel = pair & (neighbours == n)
                    if sel.sum() >= min_count:
                        cal.scales[e, n, k] = np.std(z[sel])
        return cal
