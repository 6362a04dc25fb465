"""``python -m tad_autograd``: print the report (see :mod:`tad_autograd.report`)."""

import sys

from .report import main

sys.exit(main(sys.argv[1:]))
