"""``python -m qcert`` runs the ``qcert`` command."""

from __future__ import annotations

import sys

from qcert.cli.main import main

sys.exit(main())
