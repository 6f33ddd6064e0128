"""Fixtures shared with the end-to-end tests: CLI processes and an echo service."""

from tests.e2e.conftest import echo, launch

__all__ = ["echo", "launch"]
