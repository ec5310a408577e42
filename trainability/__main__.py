"""`python -m trainability` is the `trainability` command."""

import sys

from trainability.cli import main

sys.exit(main())
