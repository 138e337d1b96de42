"""Alembic migrations of the DealFlow database.

Run them with `python -m dealflow.storage.db upgrade`.
"""
