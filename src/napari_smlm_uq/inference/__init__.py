"""Inference: preprocessing, phi and psi over tiles, the pipeline, localization, calibration."""
