"""`python -m alexserve.supervisor`: the same as `alexserve supervisor`."""

import sys

from alexserve.supervisor.command_line import main

if __name__ == "__main__":
    sys.exit(main())
