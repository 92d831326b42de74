"""``python -m reference MODEL``: run a reference server."""

import sys

from reference.cli import main

sys.exit(main())
