import sys

from fgbench.cli import main

sys.exit(main())
