"""IP warmup: a new sending IP gets a small, growing budget per mailbox provider.

| module | holds |
|---|---|
| ``schedules`` | the built-in ramps and custom ones, daily and hourly budgets |
| ``providers`` | provider groups (gmail, microsoft, yahoo, apple, other) by domain and MX |
| ``gate`` | which IP sends a message, within budgets; the adaptive hold; status |
| ``actions`` | start, pause, resume and stop a warmup (the API and ``sluice warmup``) |
| ``report`` | the planned-versus-sent chart (HTML or PNG) |

Budgets are taken atomically across workers in ``core/lua/warmup.lua`` and outcomes
recorded by ``core/lua/warmup_signal.lua``, through ``core.store.warmup``.
"""

from warmup.gate import WarmupGate, WarmupIp

__all__ = ["WarmupGate", "WarmupIp"]
