"""``python -m skiptune`` (also the entry point for ``torchrun -m skiptune``)."""

import sys

from skiptune.cli import main

sys.exit(main())
