"""`python -m neurosurgeon VERB ...`: the command line, as the `neurosurgeon` script runs it."""

import sys

from .cli import main

sys.exit(main())
