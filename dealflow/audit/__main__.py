"""`python -m dealflow.audit ...`: the same command as `dealflow-audit`."""

from dealflow.audit import main

main()
