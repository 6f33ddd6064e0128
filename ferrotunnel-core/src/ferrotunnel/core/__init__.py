"""ferrotunnel kernel."""
