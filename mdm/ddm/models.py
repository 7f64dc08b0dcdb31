"""DDM tables (filled by the DDM issue)."""
