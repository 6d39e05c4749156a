"""The catalog's database: typed models, the repository (apply / pull / query) and migrations.

The only catalog package that imports SQLAlchemy; SQLite and PostgreSQL differ by URL only.
"""

from catalog.db.engine import open_database
from catalog.db.repository import Repository

__all__ = ["Repository", "open_database"]
