"""``python -m bioreason.cli``: the ``bioreason`` command."""

import sys

from bioreason.cli import main

sys.exit(main())
