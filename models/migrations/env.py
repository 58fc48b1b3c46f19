"""Alembic environment: the URL comes from the caller (``ihub db upgrade``), not from a file."""

from __future__ import annotations

from alembic import context

from models.db import get_engine
from models.schema import Base

config = context.config


def run_migrations_online() -> None:
    engine = get_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=engine.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations_online()
