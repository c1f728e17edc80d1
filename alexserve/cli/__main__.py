"""`python -m alexserve.cli`: the same as `alexserve`."""

import sys

from alexserve.cli import main

sys.exit(main())
