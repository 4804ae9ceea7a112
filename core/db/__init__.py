"""The application database: models, sessions and migrations."""

from core.db.migrate import current_revision, head_revision, upgrade
from core.db.session import Database, write_transaction

__all__ = ["Database", "current_revision", "head_revision", "upgrade", "write_transaction"]
