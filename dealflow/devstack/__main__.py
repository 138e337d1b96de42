"""`python -m dealflow.devstack up|down|status`: see `dealflow.devstack.cli`."""

import sys

from dealflow.devstack.cli import main

sys.exit(main())
