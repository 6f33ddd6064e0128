"""ferrotunnel CLI."""
