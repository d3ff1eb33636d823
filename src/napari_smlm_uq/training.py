"""Training phi and psi on simulated data drawn fresh every batch (paper section 4; the patches:
training_data.py).

:func:`train` is a generator: it yields :class:`Progress` after every iteration and honours a stop
flag, so the CLI, the napari widget and the tests drain the same code. Checkpoints (the model file and
the optimiser state) are written atomically every ``checkpoint_every`` iterations; a run resumes from
them. The bundled weights are never overwritten.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .analysis.evaluation import calibrate, localization_report
from .defaults import PIXEL_SIZE_NM
from .inference.pipeline import DEVICE_HELP, Precision, PredictSettings, bf16_autocast, predict
from .inference.preprocessing import BackgroundEstimate, psi_condition
from .io.files import InputError, atomic_path
from .localizations import Localizations
from .models import registry
from .models.registry import Models
from .physics.astigmatism import ZCalibration
from .physics.camera import Camera, CameraKind
from .physics.crlb import crlb_nm
from .physics.simulate import SimulationSettings, simulate
from .settings import check, option
from .training_data import PatchBatches, simulate_patches

Target = Literal["phi", "psi", "both"]


@dataclass
class TrainSettings:
    """Simulation ranges (photons per emitter, background photons/px, PSF sigma raw px, density
    emitters/um^2 at ``pixel_size`` nm, read noise e- rms) and optimisation settings."""

    target: Target = option("both", help="which networks to train: phi, psi (from --init's phi) or both in turn")
    iterations: int = option(10000, help="optimiser steps per network", low=1)
    psi_iterations: int | None = option(None, help="psi's iterations when target is both (default: iterations)",
                                        low=1)
    batch_size: int = option(16, help="simulated 16x16-pixel patches per step", low=1)
    lr: float = option(5e-4, help="peak learning rate (cosine schedule with warm-up)", low=0.0, open_low=True,
                       high=1.0, label="learning rate", step=1e-6)
    photons: tuple[float, float] = option((500.0, 10000.0), help="photons per emitter (drawn log-uniformly)", low=0.0,
                                          open_low=True)
    background: tuple[float, float] = option((5.0, 100.0), help="background photons per pixel", unit="photons/px",
                                             low=0.0)
    psf_sigma: tuple[float, float] = option((0.8, 1.5), help="PSF standard deviation", unit="px", low=0.0,
                                            open_low=True, label="PSF sigma")
    density: tuple[float, float] = option((0.1, 10.0), help="mean emitters per um^2 of a patch (log-uniform)",
                                          unit="/um^2", low=0.0)
    read_noise: tuple[float, float] = option((0.0, 3.0), help="camera read noise", unit="e- rms", low=0.0)
    pixel_size: float = option(PIXEL_SIZE_NM, help="raw pixel size (sets the density scale)", unit="nm", low=0.0,
                               open_low=True)
    edge_patches: float = option(0.5, help="fraction of patches with emitters up to the patch edge (the rest: in a "
                                 "centred disc)", low=0.0, high=1.0, step=0.05)
    structured: float = option(0.5, help="fraction of patches whose blinking molecules lie on filaments or in "
                               "clusters (even odds)", low=0.0, high=1.0, step=0.05)
    out_dir: str = option("smlm-uq-training", help="output folder (model.pt and resumable checkpoints)",
                          flag="--out", gui=False)
    init: str | None = option(None, help="bundled model name or model file to fine-tune", gui=False)
    seed: int = option(0, help="random seed")
    checkpoint_every: int = option(250, help="validate and save every N iterations", low=1, label="save every")
    val_size: int = option(128, help="simulated patches in the validation set", low=1, label="validation patches")
    calibration_frames: int = option(0, help="afterwards, refit the uncertainty calibration on 6 simulated stacks of "
                                     "this many frames spanning the training ranges (0: keep the calibration of the "
                                     "model started from)", low=0, flag="--calibrate", label="calibration frames")
    precision: Precision = option("auto", help="network arithmetic: bf16 autocast, fp32, or auto (bf16 where the GPU "
                                  "or CPU computes it natively: phi trains 2.2x faster on the CPU measured)")
    device: str = option("auto", help=DEVICE_HELP)
    data_workers: int = option(0, help="processes simulating training patches beside the optimiser (0: in line)",
                               low=0)
    stage_seconds: float | None = option(None, help="time budget per stage (phi, psi): the iteration count is cut to "
                                         "fit it (paced on iterations 50-100)", unit="s", low=0.0, open_low=True)
    background_estimate: BackgroundEstimate = option("frame", help="background the input is normalised around: the "
                                                     "frame median or a local estimate")
    background_maps: float = option(0.0, help="fraction of patches whose background varies across the patch "
                                    "(gradients, illumination, cells; 1-6x)", low=0.0, high=1.0, step=0.05)
    camera_kind: CameraKind = option("ccd", help="emccd: EMCCD shot noise (read noise then in effective "
                                     "photo-electrons)", label="camera kind")
    config: dict = field(default_factory=registry.default_config)
    z_calibration: ZCalibration | None = None   # astigmatic training data (z uniform over its valid range; psf_sigma
    # not used). Not an option: the command line reads it from a file (--z-calibration CAL.json)

    def validate(self) -> TrainSettings:
        check(self)
        if self.z_calibration is not None:
            SimulationSettings(pixel_size=self.pixel_size, z_calibration=self.z_calibration).validate()
        PredictSettings(device=self.device, precision=self.precision).validate().torch_device()  # inference's rules
        if self.target == "psi" and not self.init:
            raise InputError("training psi alone needs a model to start from (init): its phi conditions psi")
        out = Path(self.out_dir).resolve()
        if out == registry.WEIGHTS_DIR.resolve() or registry.WEIGHTS_DIR.resolve() in out.parents:
            raise InputError("the output folder may not be the bundled weights folder")
        return self


@dataclass
class Progress:
    stage: str            # "phi", "psi", or "calibration" (loss: calibrated, val_loss: raw std(error/uncertainty))
    iteration: int
    iterations: int
    loss: float
    val_loss: float | None
    elapsed: float        # seconds in this stage
    model_path: Path | None  # the last good model file, once one is written


def _lr(it: int, total: int, base: float, warmup: int = 200) -> float:
    if it < warmup:
        return base * (it + 1) / warmup
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (it - warmup) / max(total - warmup, 1))))


class _Stage:
    """One model's optimisation: loss function, optimiser, validation set, checkpoints."""

    def __init__(self, name: str, models: Models, s: TrainSettings, out: Path, device: torch.device):
        self.name, self.models, self.s, self.out, self.device = name, models, s, out, device
        self.net = models.phi if name == "phi" else models.psi
        for net in (models.phi, models.psi):
            net.to(memory_format=torch.channels_last)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=s.lr)
        self.bf16 = bf16_autocast(s.precision, device)
        self.state_path = out / f"train_state_{name}.pt"
        self.iteration, self.best = 0, math.inf
        self.rng = np.random.default_rng([s.seed, 0 if name == "phi" else 1])
        self.torch_gen = torch.Generator().manual_seed(s.seed + (0 if name == "phi" else 1))
        vrng = np.random.default_rng([s.seed, 99])
        self.val = tuple(t.to(device) for t in simulate_patches(vrng, s.val_size, s))
        vgen = torch.Generator().manual_seed(12345)
        self.val_gamma = models.schedule.sample_training_gamma(s.val_size, vgen).to(device)
        self.val_noise = torch.randn(self.val[1].shape, generator=vgen).to(device)

    def loss(self, x: torch.Tensor, z0: torch.Tensor, gamma: torch.Tensor | None = None,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if self.name == "phi":
                return F.mse_loss(self.models.phi(x).float(), z0)
            with torch.no_grad():
                cond = psi_condition(x, self.models.phi(x))
            if gamma is None:
                gamma = self.models.schedule.sample_training_gamma(len(x), self.torch_gen).to(self.device)
            if noise is None:
                noise = torch.randn(z0.shape, generator=self.torch_gen).to(self.device)
            g = gamma[:, None, None, None]
            y_t = g.sqrt() * z0 + (1 - g).sqrt() * noise
            return F.mse_loss(self.models.psi(y_t, cond, gamma.sqrt()).float(), noise)

    def validate(self) -> float:
        self.net.eval()
        with torch.no_grad():
            x, z0 = self.val
            value = float(self.loss(x, z0, self.val_gamma, self.val_noise))
        self.net.train()
        return value

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Fresh training batches on the device, simulated in line or by ``s.data_workers`` processes."""
        if not self.s.data_workers:
            while True:
                yield self._to_device(simulate_patches(self.rng, self.s.batch_size, self.s))
        seeds = self.rng.integers(2**63, size=self.s.data_workers)
        loader = torch.utils.data.DataLoader(PatchBatches(self.s, seeds), batch_size=None,
                                             num_workers=self.s.data_workers, pin_memory=self.device.type == "cuda")
        for batch in loader:
            yield self._to_device(batch)

    def _to_device(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(t.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last) for t in batch)

    def save(self, model_path: Path) -> None:
        registry.save(self.models, model_path)
        state = {"iteration": self.iteration, "best": self.best, "opt": self.opt.state_dict(),
                 "net": self.net.state_dict(), "rng": self.rng.bit_generator.state,
                 "torch_gen": self.torch_gen.get_state()}
        with atomic_path(self.state_path) as tmp:
            torch.save(state, tmp)

    def resume(self) -> bool:
        if not self.state_path.exists():
            return False
        state = torch.load(self.state_path, weights_only=False)  # our own file, with numpy RNG state
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.iteration, self.best = state["iteration"], state["best"]
        self.rng.bit_generator.state = state["rng"]
        self.torch_gen.set_state(state["torch_gen"])
        return True


PACE_ITERATIONS = 50   # iterations 50-100 are timed, then a stage's count is fitted to its time budget


def fit_budget(total: int, done: int, elapsed: float, budget: float) -> int:
    """The iteration count that fits ``budget`` seconds at the pace of ``done`` iterations in ``elapsed`` s
    (never fewer than ``2 * done``, the iterations already run when it is applied)."""
    return max(2 * done, min(total, int(done * budget / max(elapsed, 1e-9))))


def calibration_stacks(s: TrainSettings) -> list[SimulationSettings]:
    """Stacks for refitting the calibration after training (evaluation.calibrate): three photon levels
    spanning the training range (log-spaced) at two densities (10 % and 50 % into its range), middle
    background, PSF sigma and read noise, 32x32 px, ``s.calibration_frames`` frames, seeds 5500+."""
    photons = np.geomspace(*s.photons, 3)
    density = [s.density[0] + f * (s.density[1] - s.density[0]) for f in (0.1, 0.5)]
    low, high = s.background
    background = float(np.sqrt(low * high)) if low > 0 else (low + high) / 2
    return [SimulationSettings(frames=s.calibration_frames, size=32, density=d, photons=float(p), background=background,
                               psf_sigma=float(np.mean(s.psf_sigma)), pixel_size=s.pixel_size,
                               camera=Camera(read_noise=float(np.mean(s.read_noise))), seed=5500 + i,
                               z_calibration=s.z_calibration)
            for i, (p, d) in enumerate((p, d) for p in photons for d in density)]


def _recalibrate(models: Models, s: TrainSettings, should_stop: Callable[[], bool]) -> dict | None:
    """Refit ``models.calibration`` on :func:`calibration_stacks`; None (calibration unchanged) when
    stopped or when nothing matched."""
    try:
        report = calibrate(models, PredictSettings(pixel_size=s.pixel_size), calibration_stacks(s), should_stop)
    except ValueError:
        return None
    if should_stop():
        return None
    models.calibration, models.info["calibration"] = report["calibration"], report
    return report


def initial_models(s: TrainSettings) -> Models:
    if s.init:
        return registry.load(s.init)
    return registry.build(s.config, name=Path(s.out_dir).name)


def record_ranges(info: dict, s: TrainSettings) -> None:
    """Write the simulation ranges of this run into a model's ``info``: ``trained_on`` is phi's, the range its
    detection learned and the one the preflight warnings compare a stack with; training psi alone on a model that
    has one records psi's ranges as ``psi_trained_on`` instead (phi, frozen, detects as before)."""
    ranges = {k: v for k, v in asdict(s).items() if k not in ("config", "out_dir", "init", "z_calibration")}
    if s.z_calibration is not None:
        ranges["z_calibration"] = s.z_calibration.to_dict()
    if s.target == "psi" and "trained_on" in info:
        info["psi_trained_on"] = ranges
        return
    info["trained_on"] = ranges
    if s.target == "both":
        info.pop("psi_trained_on", None)


def train(settings: TrainSettings, should_stop: Callable[[], bool] = lambda: False,
          models: Models | None = None) -> Generator[Progress, None, Path | None]:
    """Train (or fine-tune) the models of ``settings``; yields :class:`Progress` every iteration.
    Returns the path of the last good model file (``out_dir/model.pt``)."""
    s = settings.validate()
    device = PredictSettings(device=s.device).torch_device()
    out = Path(s.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(s.seed)  # before the networks are initialised, so a seed reproduces a run
    models = models or initial_models(s)
    models.name = out.name
    record_ranges(models.info, s)
    model_path = out / "model.pt"
    good = model_path if model_path.exists() else None
    stages = ["phi", "psi"] if s.target == "both" else [s.target]
    if models.psi is None and "psi" in stages:
        raise InputError("this model has no psi to train")
    if "psi" in stages:   # a psi trained to predict noise again takes the two-step sampler, not a distilled one's
        for key in ("sampler", "distilled_psi"):
            models.info.pop(key, None)
    for name in stages:
        total = s.psi_iterations if name == "psi" and s.psi_iterations else s.iterations
        models.to(device)
        stage = _Stage(name, models, s, out, device)
        stage.resume()
        other = models.psi if name == "phi" else models.phi
        if other is not None:
            other.eval().requires_grad_(False)
        stage.net.train().requires_grad_(True)
        start, batches = time.perf_counter(), stage.batches()
        pace_start = None  # a run resumed inside the pace window keeps its iteration count
        while stage.iteration < total:
            if should_stop():
                models.to("cpu")
                return good
            for group in stage.opt.param_groups:
                group["lr"] = _lr(stage.iteration, total, s.lr)
            # grad on whatever the thread was left in (a worker thread's earlier job may have left inference mode)
            with torch.inference_mode(False), torch.enable_grad():
                x, z0 = next(batches)
                loss = stage.loss(x, z0)
                stage.opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(stage.net.parameters(), 1.0)
                stage.opt.step()
            stage.iteration += 1
            if s.stage_seconds and stage.iteration in (PACE_ITERATIONS, 2 * PACE_ITERATIONS):
                paced = time.perf_counter() - start
                if stage.iteration == PACE_ITERATIONS:
                    pace_start = paced  # the first iterations carry the start-up (data workers): not timed
                elif pace_start is not None:
                    total = fit_budget(total, PACE_ITERATIONS, paced - pace_start, s.stage_seconds - pace_start)
            val = None
            if stage.iteration % s.checkpoint_every == 0 or stage.iteration == total:
                val = stage.validate()
                stage.best = min(stage.best, val)
                stage.net.eval()
                stage.save(model_path)
                stage.net.train()
                good = model_path
            yield Progress(name, stage.iteration, total, loss.item(), val, time.perf_counter() - start, good)
        stage.net.eval()
    models.to("cpu")
    if s.calibration_frames and models.psi is not None and good is not None:
        start = time.perf_counter()
        report = _recalibrate(models, s, should_stop)
        if report is not None:
            registry.save(models, model_path)
            yield Progress("calibration", 1, 1, report["calibrated_spread"], report["raw_spread"],
                           time.perf_counter() - start, good)
    return good


def typical(lo: float, hi: float) -> float:
    """The median of the simulator's draw over ``(lo, hi)``: log-uniform when ``lo > 0``."""
    return math.sqrt(lo * hi) if lo > 0 else 0.5 * (lo + hi)


def validation_settings(s: TrainSettings, frames: int = 8, size: int = 32) -> tuple[SimulationSettings, dict]:
    """A small validation stack drawn with the training ranges, and the typical values for the CRLB."""
    mid = {"photons": typical(*s.photons), "background": typical(*s.background),
           "psf_sigma": 0.5 * sum(s.psf_sigma), "density": 0.5 * sum(s.density),
           "read_noise": 0.5 * sum(s.read_noise)}
    sim = SimulationSettings(frames=frames, size=size, density=max(mid["density"], 0.5), photons=tuple(s.photons),
                             background=tuple(s.background), psf_sigma=tuple(s.psf_sigma), pixel_size=s.pixel_size,
                             camera=Camera(read_noise=mid["read_noise"]), seed=s.seed + 7,
                             z_calibration=s.z_calibration)
    return sim, mid


def validate_model(model_path, s: TrainSettings, frames: int = 8, size: int = 32) -> dict:
    """Localize a fresh simulated stack drawn with the training ranges with phi alone (samples = 0): JAC,
    RMSE (nm), E beside the CRLB (nm per axis) at the ranges' typical photons and background."""
    sim_settings, mid = validation_settings(s, frames, size)
    sim = simulate(sim_settings)
    ps = PredictSettings(samples=0, camera=sim_settings.camera, pixel_size=s.pixel_size, device="cpu",
                         z_calibration=s.z_calibration)
    locs = Localizations.concat([r.localizations for r in predict(sim.adu, registry.load(model_path), ps)])
    report = localization_report(locs, sim.emitters, s.pixel_size)
    bound = crlb_nm(mid["photons"], mid["background"], mid["psf_sigma"], s.pixel_size, mid["read_noise"])
    return {**report, "crlb": bound, "frames": frames, "size": size, "emitters": int(len(sim.emitters)),
            "photons": mid["photons"], "background": mid["background"], "density": sim_settings.density}
