"""Alembic environment: the URL comes from the caller (``ihub db ...``), not from a file.

Online, it migrates through our own engine; offline (``ihub db upgrade --sql``) it writes the
SQL for the URL's dialect without connecting.
"""

from __future__ import annotations

from alembic import context

from models.db import get_engine, normalize_url
from models.schema import Base

config = context.config


def run_migrations_offline() -> None:
    context.configure(
        url=normalize_url(config.get_main_option("sqlalchemy.url") or ""),
        target_metadata=Base.metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


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


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
