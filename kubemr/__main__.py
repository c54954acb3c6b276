"""`python -m kubemr` is the `kubemr` command (how `kubemr run` starts its workers)."""

import sys

from kubemr.cli import main

sys.exit(main())
