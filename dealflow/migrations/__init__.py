"""Alembic migrations of the DealFlow database; run them with `python -m dealflow.db upgrade`."""
