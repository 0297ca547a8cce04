"""`python -m mifo_cli`: what `mifo serve` and the tests spawn for a worker or a command."""

import sys

from mifo_cli import main

sys.exit(main())
