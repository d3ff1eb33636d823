"""numpy's and scipy's OpenBLAS on one thread, for the fits.

The fits (physics/fit.py, physics/elliptical_fit.py) multiply and solve many small matrices (49 x 441 at most, per
box). OpenBLAS splits such a product over its threads; where the cores are busy (the networks run beside the host
work, inference/overlap.py) those threads wait on each other: a 49 x 441 x 49 product takes 10-17 ms with
OpenBLAS's two threads on the busy 2-core dev machine and 0.4 ms on one, and the 3D refinement of a 32x32 frame
1.7-2.2 s against 0.4 s. So the first fit sets OpenBLAS to one thread for the whole process (a limit set and
then given back within a worker thread does not reliably hold in OpenBLAS, so it is not given back), unless
``OPENBLAS_NUM_THREADS`` is set: then the user's choice stands. torch's own thread pool is not touched.
"""
from __future__ import annotations

import functools
import os

from threadpoolctl import ThreadpoolController


@functools.cache
def one_openblas_thread() -> None:
    """Set OpenBLAS to one thread, once per process (see the module docstring; two threads racing to the first
    call both set it, which is harmless)."""
    if "OPENBLAS_NUM_THREADS" not in os.environ:
        ThreadpoolController().select(internal_api="openblas").limit(limits=1)
