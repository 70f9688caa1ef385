"""Suppression lists (not built yet: see docs/architecture.md)."""

__all__: list[str] = []
