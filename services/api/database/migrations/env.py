"""Alembic environment: always handed a connection by services.api.database.migrate."""

from alembic import context

from services.api.repo.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
