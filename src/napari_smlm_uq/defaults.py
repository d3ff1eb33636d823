"""Defaults used by several stages, each written once here."""
from __future__ import annotations

PIXEL_SIZE_NM = 100.0        # raw camera pixel in the sample plane, when a file does not say (the bundled model's)
RENDER_PIXEL_NM = 10.0       # pixel of the rendered localizations
CAMERA_FIELDS = ("offset", "gain", "read_noise")   # a camera's values (ADU, ADU/e-, e- rms), scalars or maps
