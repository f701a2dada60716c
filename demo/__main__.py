"""`python -m demo`: see demo/cli.py for the options."""

import sys

from demo.cli import main

sys.exit(main())
