"""Open pixel, click redirect and one-click unsubscribe (not built yet: see docs/architecture.md)."""

__all__: list[str] = []
