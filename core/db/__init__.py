"""The application database: models, sessions and migrations."""

from core.db.migrate import current_revision, head_revision, upgrade
from core.db.session import Database, database_url, take_write_lock, write_transaction

__all__ = [
    "Database",
    "current_revision",
    "database_url",
    "head_revision",
    "take_write_lock",
    "upgrade",
    "write_transaction",
]
