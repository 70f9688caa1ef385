"""Delivery: rendering, MIME building, routing, pooled SMTP, the queue workers."""

from mta.mime import Mailbox, build_message
from mta.render import (
    RenderError,
    RenderOverBudget,
    TemplateCache,
    TemplateError,
    TemplateOverBudget,
    Templates,
)
from mta.worker import Worker, run_worker_process

__all__ = [
    "Mailbox",
    "RenderError",
    "RenderOverBudget",
    "TemplateCache",
    "TemplateError",
    "TemplateOverBudget",
    "Templates",
    "Worker",
    "build_message",
    "run_worker_process",
]
