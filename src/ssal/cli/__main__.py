"""``python -m ssal.cli``: the ``ssal`` command."""

import sys

from ssal.cli import main

sys.exit(main())
