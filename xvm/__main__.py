"""`python -m xvm` is the `xvm` command."""

import sys

from xvm.cli import main

sys.exit(main())
