"""Allow ``python -m transformer_squared.cli``."""

import sys

from . import main

sys.exit(main())
