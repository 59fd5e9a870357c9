"""Store implementations; SQLite is the embedded default."""
