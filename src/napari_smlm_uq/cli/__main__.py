"""``python -m napari_smlm_uq.cli``: the ``smlm-uq`` command line."""
import sys

from . import main

sys.exit(main())
