"""``python -m dalle`` (and ``torchrun -m dalle``) runs the command line."""

import sys

from dalle.cli import main

sys.exit(main())
