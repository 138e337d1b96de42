"""`python -m dealflow.storage.db upgrade|current`."""

from dealflow.storage.db.cli import main

raise SystemExit(main())
