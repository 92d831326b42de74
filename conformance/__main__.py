"""``python -m conformance``: the ``reactor-conformance`` command."""

import sys

from conformance.cli import main

sys.exit(main())
