"""The store: SQL tables, repositories and migrations. It holds no knowledge of the Plooto portal."""
