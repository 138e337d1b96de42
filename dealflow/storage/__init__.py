"""Where DealFlow keeps what is not in a workflow history: the database (`db`,
its alembic `migrations`, `groupcommit` for batched writes) and the document
stores (`documents`)."""
