"""Optional integrations that need third-party packages (each behind its own extra)."""
