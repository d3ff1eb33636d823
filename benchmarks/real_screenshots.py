"""napari screenshots of the real stacks of ../shared/data for docs/real-data.md, taken in a real napari window.

    python benchmarks/real_screenshots.py [--samples 8]   # re-runs itself under xvfb-run without a display

Each stack is opened with the plugin's reader and super-resolved with the prediction widget and the bundled
model (default pipeline), as a user would: the sCMOS frames on a 64x64-px crop (the default pipeline on the
whole 256x256-px field takes most of an hour on the 2-core dev CPU) with the calibration map cropped alike,
the pixel size (160 nm, from the READMEs, not in the files) typed in; Picasso's movie whole, with the camera
and the background estimate chosen from the data. Writes ``docs/img/real_<stack>_panels.png`` (SR mean, SR
std and the localizations coloured by their uncertainty, over the raw frame, at one frame),
``docs/img/real_scmos_window.png`` (the whole window with the widget) and ``docs/img/real_screenshots.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# sibling scripts, importable once their folders are on sys.path
sys.path.insert(0, str(ROOT / "docs"))
from make_screenshots import ensure_display, wait  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from real_acquisitions import shared_data  # noqa: E402

IMG = ROOT / "docs" / "img"
SIZE = (1500, 900)
PANEL_WIDTH = 400      # pixels per panel in the panels PNG
PIXEL_NM = 160.0       # both stacks (READMEs)
SCMOS_CROP = (slice(96, 160), slice(96, 160))   # the central 64x64 px, as benchmarks/real_acquisitions.py
UNCERTAINTY_COLORMAP = "plasma"


def open_stack(viewer, path: Path, crop: tuple[slice, slice] | None, name: str):
    """The plugin's reader, the pixel size typed in, and (``crop``) a cropped copy placed over the frames."""
    raw = viewer.open(str(path), plugin="napari-smlm-uq")[0]
    raw.metadata["pixel_size"] = PIXEL_NM
    raw.scale = (1.0, PIXEL_NM, PIXEL_NM)
    if crop is None:
        return raw
    rows, cols = crop
    meta = {k: v for k, v in raw.metadata.items() if k != "path"}
    data = np.asarray(raw.data[:, rows, cols])
    layer = viewer.add_image(data, name=name, metadata=meta, scale=raw.scale, colormap="gray",
                             translate=(0.0, rows.start * PIXEL_NM, cols.start * PIXEL_NM),
                             units=raw.units, axis_labels=raw.axis_labels)
    viewer.layers.remove(raw)
    return layer


def predict(viewer, app, layer, samples: int, work: Path, camera_map: Path | None = None):
    dock, widget = viewer.window.add_plugin_dock_widget("napari-smlm-uq", "Super-resolve with uncertainty")
    widget.layer.value = layer
    widget.pixel_size.value = PIXEL_NM
    if camera_map is not None:
        widget.camera_map.value = camera_map
    widget.model.select("default")
    widget.samples.value = samples
    widget.output.value = work
    t0 = time.process_time()
    widget.run()
    wait(app, lambda: not widget.running, timeout=3600)
    return dock, widget, time.process_time() - t0


def style(viewer, source: str, frame: int) -> dict:
    """Contrast limits from the frame shown, localizations coloured by uncertainty; returns the limits."""
    raw, mean, std = viewer.layers[source], viewer.layers[f"{source} SR mean"], viewer.layers[f"{source} SR std"]
    shown = np.asarray(raw.data[frame], float)
    raw.contrast_limits = tuple(float(v) for v in np.percentile(shown, (1, 99.5)))
    limits = {raw.name: raw.contrast_limits}
    for layer in (mean, std):
        top = float(np.percentile(np.asarray(layer.data[frame]), 99.9))
        layer.contrast_limits = (0.0, max(top, 1e-3))
        limits[layer.name] = layer.contrast_limits
    points = viewer.layers[f"{source} localizations"]
    u = points.features["uncertainty [nm]"].to_numpy()
    lo, hi = np.nanpercentile(u, (5, 95))
    points.face_color = "uncertainty [nm]"
    points.face_colormap = UNCERTAINTY_COLORMAP
    points.face_contrast_limits = (float(lo), float(hi))
    points.size = 1.6 * PIXEL_NM
    limits["uncertainty [nm]"] = (float(lo), float(hi))
    viewer.dims.set_current_step(0, frame)
    return limits


def show_only(viewer, names: set[str]) -> None:
    for layer in viewer.layers:
        layer.visible = layer.name in names


def field(layer) -> tuple[float, float, float, float]:
    """World bounds ``(y0, x0, y1, x1)`` of a raw layer's pixels (edges, not centres)."""
    (_, sy, sx), (_, ty, tx) = layer.scale, layer.translate
    h, w = layer.data.shape[-2:]
    return ty - sy / 2, tx - sx / 2, ty + (h - 0.5) * sy, tx + (w - 0.5) * sx


def canvas_shot(viewer, app, raw) -> np.ndarray:
    """The canvas at ``PANEL_WIDTH`` pixels across, showing exactly the raw layer's field."""
    y0, x0, y1, x1 = field(raw)
    viewer.scene.camera.center = (0.5 * (y0 + y1), 0.5 * (x0 + x1))
    viewer.scene.camera.zoom = PANEL_WIDTH / (x1 - x0)
    wait(app, lambda: True)
    return viewer.screenshot(size=(round(PANEL_WIDTH * (y1 - y0) / (x1 - x0)), PANEL_WIDTH), canvas_only=True)


def panels(viewer, app, raw: str, source: str, path: Path) -> None:
    """SR mean | SR std | localizations over the raw frame, side by side, each showing the raw field."""
    from PIL import Image

    shots = []
    for names in ({f"{source} SR mean"}, {f"{source} SR std"}, {raw, f"{source} localizations"}):
        show_only(viewer, names)
        shots.append(Image.fromarray(canvas_shot(viewer, app, viewer.layers[raw])).convert("RGB"))
    out = Image.new("RGB", (sum(s.width for s in shots) + 8, shots[0].height), "white")
    for k, shot in enumerate(shots):
        out.paste(shot, (k * (shot.width + 4), 0))
    out.save(path, optimize=True)
    print("wrote", path, path.stat().st_size // 1024, "KB")


def notes(widget, work: Path) -> dict:
    """The widget's notes after the run (camera, background, precision check), without the temporary folder."""
    clean = lambda text: text.replace(f"{work}/", "")
    return {"camera": clean(widget.camera_note.value), "background": widget.background_note.value,
            "precision": widget.precision.value}


def busiest_frame(widget) -> int:
    """The frame with the most localizations (Picasso's movie is mostly empty)."""
    frames = widget.results.localizations().frame
    return int(np.bincount(frames).argmax()) if len(frames) else 0


def fit_view(viewer, layer) -> None:
    """The layer's field filling the canvas."""
    viewer.reset_view()
    (_, y0, x0), (_, y1, x1) = layer.extent.world
    viewer.scene.camera.center = (0.5 * (y0 + y1), 0.5 * (x0 + x1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8, help="diffusion samples per frame")
    args = parser.parse_args()
    data = shared_data()
    if data is None:
        sys.exit("../shared/data not found")
    ensure_display()
    import napari
    import tifffile
    import torch
    from napari.settings import get_settings
    from qtpy.QtWidgets import QApplication

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    get_settings().application.gui_notification_level = "error"  # no toasts over the canvas
    work = Path(tempfile.mkdtemp(prefix="smlm-uq-real-shots-"))
    IMG.mkdir(parents=True, exist_ok=True)
    record = {"samples": args.samples, "date": time.strftime("%Y-%m-%d"), "model": "default", "stacks": {}}

    viewer = napari.Viewer(show=True, title="napari-smlm-uq")
    viewer.window.resize(*SIZE)
    app = QApplication.instance()
    viewer.canvas.overlays.scale_bar.visible = True

    # --- real sCMOS frames: a 64x64 crop, the calibration map cropped alike ---------------------------
    scmos = data / "real-scmos-storm"
    calib = tifffile.imread(scmos / "calib_offset_variance_gain.tif")
    camera_map = work / "calib_crop.npy"
    np.save(camera_map, calib[(slice(None), *SCMOS_CROP)])
    layer = open_stack(viewer, scmos / "sample.tif", SCMOS_CROP, "sample (64x64 crop)")
    dock, widget, seconds = predict(viewer, app, layer, args.samples, work, camera_map)
    frame = 5
    limits = style(viewer, layer.name, frame)
    fit_view(viewer, layer)
    show_only(viewer, {layer.name, f"{layer.name} SR mean", f"{layer.name} localizations"})
    viewer.layers[f"{layer.name} SR mean"].blending = "additive"
    viewer.layers.selection.active = viewer.layers[f"{layer.name} localizations"]
    wait(app, lambda: True)
    window = IMG / "real_scmos_window.png"
    viewer.screenshot(path=str(window), canvas_only=False, flash=False)
    print("wrote", window, window.stat().st_size // 1024, "KB")
    panels(viewer, app, layer.name, layer.name, IMG / "real_scmos_panels.png")
    record["stacks"]["real-scmos-storm"] = {
        "crop_px": [[s.start, s.stop] for s in SCMOS_CROP], "frame": frame, "limits": limits,
        "localizations": len(widget.results.localizations()), "cpu_seconds": seconds, **notes(widget, work)}
    viewer.window.remove_dock_widget(dock)
    for name in [layer.name for layer in viewer.layers]:   # one at a time (docs/napari.md, Xvfb)
        viewer.layers.remove(name)

    # --- Picasso's DNA-PAINT movie: whole, camera and background from the data -------------------------
    layer = open_stack(viewer, data / "picasso-testdata" / "testdata.tif", None, "")
    dock, widget, seconds = predict(viewer, app, layer, args.samples, work)
    frame = busiest_frame(widget)
    limits = style(viewer, layer.name, frame)
    panels(viewer, app, layer.name, layer.name, IMG / "real_picasso_panels.png")
    record["stacks"]["picasso-testdata"] = {
        "frame": frame, "limits": limits, "localizations": len(widget.results.localizations()),
        "cpu_seconds": seconds, **notes(widget, work)}
    (IMG / "real_screenshots.json").write_text(json.dumps(record, indent=1, default=float) + "\n")
    viewer.window.remove_dock_widget(dock)
    viewer.close()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
