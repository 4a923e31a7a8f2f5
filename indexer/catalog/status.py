"""A photo's ``status`` values in the catalog (importable without SQLAlchemy)."""

PENDING = "pending"
INDEXED = "indexed"
ERROR = "error"
