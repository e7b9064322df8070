"""``python -m radfm.app``: the same app as ``radfm app``."""

import sys

from radfm.app import main

sys.exit(main())
