"""`python -m wxplatform` is the `wxplatform` command."""

import sys

from wxplatform.cli import main

sys.exit(main())
