"""``python -m conformance``: the ``reactor-conformance`` command."""

import sys

from conformance.fronts.cli import main

sys.exit(main())
