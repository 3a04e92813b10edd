"""`python -m neurosurgeon_runtime rpc-server ...` (in a bundle) or `python -m neurosurgeon.runtime ...`."""

import sys

from .commands import main

sys.exit(main())
