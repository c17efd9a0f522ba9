import sys

from lm_diff.cli import main

sys.exit(main())
