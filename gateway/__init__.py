"""The ``sluice`` CLI (``gateway.cli``), the HTTP API (``gateway.app``) and the assembly of
the whole gateway (``gateway.serve``)."""
