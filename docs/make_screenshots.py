"""Screenshots of the napari plugin for docs/napari.md, taken in a real napari window.

    python docs/make_screenshots.py [--model FILE]   # re-runs itself under xvfb-run without a display

Uses ``--model FILE`` if given, else the bundled model "default" when it is installed, else tiny random
networks (the layout is right, the images are not real results: re-run once the bundled weights
exist). Writes
docs/img/napari_*.png and docs/img/napari_screenshots.json (which model made them).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMG = Path(__file__).resolve().parent / "img"
SIZE = (1400, 1000)


def ensure_display() -> None:
    if os.environ.get("DISPLAY") or os.environ.get("SMLM_UQ_NO_XVFB"):
        return
    xvfb = shutil.which("xvfb-run")
    if not xvfb:
        sys.exit("no display and no xvfb-run: install xvfb (see docs/napari.md)")
    env = {**os.environ, "SMLM_UQ_NO_XVFB": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [xvfb, "-a", "-s", f"-screen 0 {SIZE[0] + 200}x{SIZE[1] + 200}x24", sys.executable, *sys.argv]
    sys.exit(subprocess.call(cmd, env=env))


def wait(app, condition, timeout: float = 900.0) -> None:
    t0 = time.time()
    while not condition():
        app.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError("gave up waiting")
    for _ in range(20):  # let the canvas catch up
        app.processEvents()
        time.sleep(0.02)


def shoot(viewer, app, name: str) -> Path:
    wait(app, lambda: True)
    path = IMG / name
    viewer.screenshot(path=str(path), canvas_only=False, flash=False)
    print("wrote", path)
    return path


def zoom_on_centre(viewer, width_nm: float) -> None:
    """Show a ``width_nm`` wide field at the centre of the data."""
    viewer.reset_view()
    (_, y0, x0), (_, y1, x1) = viewer.layers.extent.world
    viewer.scene.camera.center = (0.5 * (y0 + y1), 0.5 * (x0 + x1))
    viewer.scene.camera.zoom *= (x1 - x0) / width_nm


def long_run(viewer, app, predict) -> None:
    """Every frame of the sample, DeepSTORM alone (samples 0): the rendering of all localizations."""
    predict.layer.value = viewer.layers["simulated stack"]
    predict.samples.value, predict.stop_frame.value = 0, viewer.layers["simulated stack"].data.shape[0]
    predict.run()
    wait(app, lambda: not predict.running)
    for layer in viewer.layers:
        layer.visible = layer.name in ("simulated stack rendered", "simulated stack")
    viewer.layers["simulated stack"].opacity = 0.3
    viewer.dims.set_current_step(0, 10)
    zoom_on_centre(viewer, 3200.0)
    shoot(viewer, app, "napari_predict_long.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model file to use instead of the bundled model")
    parser.add_argument("--predict-only", action="store_true", help="stop after the two prediction screenshots")
    args = parser.parse_args()
    ensure_display()
    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_smlm_uq._napari import _models
    from napari_smlm_uq.models import registry

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    IMG.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="smlm-uq-shots-"))
    bundled = registry.DEFAULT_MODEL in _models.bundled()
    trained = bool(args.model) or bundled
    from napari_smlm_uq.inference.pipeline import PredictSettings

    if args.model:
        model = str(_models.register(args.model))
        samples, steps, frames = PredictSettings.samples, PredictSettings.steps, 4
    elif bundled:
        model = registry.DEFAULT_MODEL
        samples, steps, frames = PredictSettings.samples, PredictSettings.steps, 4
    else:
        model = str(work / "tiny-random.pt")
        registry.save(registry.build(registry.tiny_config(), name="tiny-random"), model)
        samples, steps, frames = 4, 4, 6

    from napari.settings import get_settings

    get_settings().application.gui_notification_level = "error"  # no toasts over the canvas
    viewer = napari.Viewer(show=True, title="napari-smlm-uq")
    viewer.window.resize(*SIZE)
    app = QApplication.instance()
    viewer.open_sample("napari-smlm-uq", "simulated_stack")
    viewer.canvas.overlays.scale_bar.visible = True
    viewer.dims.set_current_step(0, 2)
    shoot(viewer, app, "napari_sample.png")

    # --- prediction -----------------------------------------------------------------------------
    dock, predict = viewer.window.add_plugin_dock_widget("napari-smlm-uq", "Super-resolve with uncertainty")
    predict.layer.value = viewer.layers["simulated stack"]
    if trained and not args.model:
        predict.model.select(model)
    else:
        predict.model.add_file(model)
    predict.samples.value = samples
    predict.steps.value = steps
    predict.stop_frame.value = frames
    predict.run()
    wait(app, lambda: not predict.running)
    viewer.layers["ground truth"].visible = False
    for kind in ("SR sample", "SR std", "SR sum", "SR sum std", "rendered"):
        viewer.layers[f"simulated stack {kind}"].visible = False
    viewer.layers.selection.active = viewer.layers["simulated stack localizations"]
    viewer.dims.set_current_step(0, 2)
    zoom_on_centre(viewer, 2400.0)
    shoot(viewer, app, "napari_predict.png")

    if args.predict_only:
        long_run(viewer, app, predict)
        return
    viewer.window.remove_dock_widget(dock)

    # --- uncertainty threshold ------------------------------------------------------------------
    dock, threshold = viewer.window.add_plugin_dock_widget("napari-smlm-uq", "Filter by uncertainty")
    threshold.slider.value = 0.3 * threshold.slider.max
    wait(app, lambda: "simulated stack SR mean filtered" in viewer.layers
         and viewer.layers["simulated stack SR mean filtered"].metadata.get("threshold") == threshold.threshold())
    viewer.layers["simulated stack SR mean"].visible = False
    viewer.layers.selection.active = viewer.layers["simulated stack SR mean uncertain"]
    shoot(viewer, app, "napari_threshold.png")
    viewer.window.remove_dock_widget(dock)

    # --- training -------------------------------------------------------------------------------
    for layer in list(viewer.layers):
        layer.visible = layer.name in ("simulated stack", "ground truth")
    dock, train = viewer.window.add_plugin_dock_widget("napari-smlm-uq", "Train on simulated data")
    train.layer.value = viewer.layers["simulated stack"]
    viewer.reset_view()
    viewer.layers.selection.active = viewer.layers["simulated stack"]
    if trained:
        train.start_model.select(model)
        train.target.value = "phi"
        train.iterations.value = 40
        train.batch_size.value = 8
        train.checkpoint_every.value = 10
    else:
        train.start_model.select(_models.SCRATCH)
        train.architecture.value = "tiny"
        train.iterations.value = 60
        train.batch_size.value = 4
        train.checkpoint_every.value = 15
    train.val_size.value = 16
    out = work / "trained"
    train.out_dir.value = out
    train.run()
    wait(app, lambda: not train.running)
    train.out_dir.value = out  # show where the model went, not the next run's fresh folder
    shoot(viewer, app, "napari_train.png")
    _, predict = viewer.window.add_plugin_dock_widget("napari-smlm-uq", "Super-resolve with uncertainty")
    long_run(viewer, app, predict)

    (IMG / "napari_screenshots.json").write_text(json.dumps({
        "model": Path(model).name if trained else "tiny random networks (registry.tiny_config()), not trained",
        "trained": trained, "samples": samples, "steps": steps, "frames": frames,
        "validation": train.metrics, "date": time.strftime("%Y-%m-%d")}, indent=2, default=float) + "\n")
    viewer.close()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
