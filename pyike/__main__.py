"""``python -m pyike``: the same as the ``pyike`` command."""

import sys

from pyike.cli import main

sys.exit(main())
