"""The ``sluice`` CLI, the HTTP API and the assembly of the whole gateway."""

from gateway.app import create_app
from gateway.cli import main

__all__ = ["create_app", "main"]
