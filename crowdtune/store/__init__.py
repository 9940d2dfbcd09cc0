"""DuckDB store: schema, the single writer, read queries."""
