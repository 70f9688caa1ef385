"""The gateway: every door into Sluice and the process that runs it all.

| module | holds |
|---|---|
| ``api`` | the HTTP API, one module per resource with its OpenAPI description |
| ``app`` | the aiohttp application assembled: middlewares, routes, shared resources |
| ``middleware`` | errors as ``{error, detail, field}``, the API key, compressed bodies |
| ``intake`` | the one sequence every send request takes: validate, render, accept |
| ``schemas`` | validating a ``/v1/messages`` body |
| ``submission`` | SMTP submission (``--submission``), into the same intake |
| ``webhooks`` | events out to ``SLUICE_WEBHOOK_URL``, signed and retried |
| ``preflight`` | the pre-launch checklist (``sluice preflight``) |
| ``cli`` | the ``sluice`` command, one module per command |
| ``serve`` | ``sluice serve``: embedded Redis, workers, listeners, shutdown |

Nothing imports ``gateway``: imports flow ``gateway -> {mta, tracking, suppression,
warmup} -> core``.
"""
