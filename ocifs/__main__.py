"""``python -m ocifs``: the same as the ``ocifs`` command."""

import sys

from .cli import main

sys.exit(main())
