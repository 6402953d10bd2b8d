"""Results database: SQLAlchemy models, store, queries, import/export, regression detection."""
