"""CLI commands owned by the core package."""
