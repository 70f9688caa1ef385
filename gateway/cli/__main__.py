"""``python -m gateway.cli``: the ``sluice`` command."""

import sys

from gateway.cli import main

sys.exit(main())
