"""`python -m dealflow.storage.documents create-bucket`."""

from dealflow.storage.documents.cli import main

raise SystemExit(main())
