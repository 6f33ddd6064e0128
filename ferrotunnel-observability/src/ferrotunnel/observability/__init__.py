"""Observability plugins for ferrotunnel: dashboard, Prometheus metrics, OpenTelemetry traces."""
