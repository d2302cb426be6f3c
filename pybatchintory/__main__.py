"""``python -m pybatchintory``: the command line (see :mod:`pybatchintory.cli`)."""

import sys

from .cli import main

sys.exit(main())
