"""`python -m dealflow.audit ...`: the same command as `dealflow-audit`."""

from dealflow.audit.cli import main

main()
