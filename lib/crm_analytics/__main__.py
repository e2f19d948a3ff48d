"""Allow ``python -m crm_analytics``."""

import sys

from crm_analytics.cli import main

sys.exit(main())
