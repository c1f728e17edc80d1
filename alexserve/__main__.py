import sys

from alexserve.cli import main

sys.exit(main())
