"""The history database: SQLAlchemy 2 models, Alembic migrations and the single writer (`db.store.Store`)."""
