"""The napari screenshots of a 3D result for docs/3d.md and docs/napari.md, taken in a real napari window.

    python docs/make_screenshot_3d.py                    # re-runs itself under xvfb-run without a display
    python docs/make_screenshot_3d.py --results FOLDER   # the views of a run kept (the output folder it printed)

A simulated astigmatic movie (the calibration of the tests: sigma 1 px in each axis's focus, foci 500 nm
apart, 100 nm pixels; blinking molecules on filaments whose z follows a dome, -350 to 350 nm), the bundled
model with samples 0 (DeepSTORM alone), predicted through the widget with the calibration. Writes
docs/img/napari_3d.png (the 3D view of the localizations) and docs/img/napari_3d_render.png (the 2D view:
the rendering coloured by z).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_screenshots import SIZE, ensure_display, shoot, wait

FRAMES, PIXELS = 60, 48
Z_LIMIT = 60.0   # nm: the threshold widget's z uncertainty slider in the 3D view


def calibration():
    from napari_smlm_uq.physics.astigmatism import DefocusCurve, ZCalibration

    return ZCalibration(DefocusCurve(1.0, -250.0, 400.0, 0.1, 0.05), DefocusCurve(1.05, 250.0, 380.0, -0.1, 0.05),
                        (-550.0, 550.0), 100.0)


def movie(cal) -> np.ndarray:
    """Camera frames (ADU): filaments' blinking molecules, each at z = 350 cos(pi r / R) nm (r from the centre)."""
    from napari_smlm_uq.physics.simulate import SimulationSettings, expected_photons, simulate

    s = SimulationSettings(frames=FRAMES, size=PIXELS, structure="filaments", density=1.5, photons=3000.0,
                           pixel_size=100.0, seed=3, z_calibration=cal)
    e = simulate(s).emitters
    r = np.hypot(e.row - PIXELS / 2, e.col - PIXELS / 2)
    e.z = 350.0 * np.cos(np.pi * np.minimum(r / (PIXELS / 2), 1.0))
    omega = expected_photons(e, FRAMES, (PIXELS, PIXELS), np.ones(FRAMES), np.full(FRAMES, 20.0), cal)
    return np.clip(np.rint(s.camera.expose(omega, np.random.default_rng(4))), 0, 65535).astype(np.uint16)


def predict(viewer, app, work: Path) -> None:
    """The movie through the prediction widget with the calibration, DeepSTORM alone (results kept in ``work``)."""
    from napari_smlm_uq.io.zcalibration import write_zcalibration

    cal = calibration()
    write_zcalibration(work / "cal.json", cal)
    viewer.add_image(movie(cal), name="astigmatic", scale=(1, 100.0, 100.0), axis_labels=("frame", "y", "x"),
                     units=("pixel", "nm", "nm"),
                     metadata={"pixel_size": 100.0, "offset": 100.0, "gain": 1.0, "read_noise": 1.5})
    _, widget = viewer.window.add_plugin_dock_widget("napari-smlm-uq", "Super-resolve with uncertainty")
    widget.model.select("default")
    widget.samples.value = 0
    widget.z_calibration.value = work / "cal.json"
    widget.output.value = work
    widget.run()
    wait(app, lambda: not widget.running)
    print(widget.status.value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", help="an output folder of an earlier run of this script: its views only")
    args = parser.parse_args()
    ensure_display()
    import napari
    import torch
    from napari.settings import get_settings
    from qtpy.QtWidgets import QApplication

    from napari_smlm_uq._napari._view3d import prepare_3d

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    get_settings().application.gui_notification_level = "error"  # no toasts over the canvas
    viewer = napari.Viewer(show=True, title="napari-smlm-uq")
    viewer.window.resize(*SIZE)
    app = QApplication.instance()
    if args.results:
        viewer.open(args.results, plugin="napari-smlm-uq")
        prepare_3d(viewer)
    else:
        predict(viewer, app, Path(tempfile.mkdtemp(prefix="smlm-uq-3d-")))
    viewer.canvas.overlays.scale_bar.visible = True
    for layer in viewer.layers:
        layer.visible = layer.name in ("astigmatic rendered by z", "astigmatic localizations")
    viewer.layers.selection.active = viewer.layers["astigmatic localizations"]
    viewer.dims.set_current_step(1, FRAMES // 2)
    viewer.reset_view()
    shoot(viewer, app, "napari_3d_render.png")
    viewer.layers["astigmatic rendered by z"].visible = False
    _, threshold = viewer.window.add_plugin_dock_widget("napari-smlm-uq", "Filter by uncertainty")
    threshold.z_slider.value = Z_LIMIT   # hides too the localizations whose 3D fit was not kept (no z uncertainty)
    wait(app, lambda: not threshold.points_pending)
    for layer in viewer.layers:   # the image layers have no z: in 3D, the localizations alone
        layer.visible = layer.name == "astigmatic localizations"
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    viewer.scene.camera.angles = (-70.0, 20.0, 120.0)
    viewer.scene.camera.zoom *= 0.7
    viewer.layers.selection.active = viewer.layers["astigmatic localizations"]
    shoot(viewer, app, "napari_3d.png")


if __name__ == "__main__":
    main()
