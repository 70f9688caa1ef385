"""Per-recipient rendering of ``subject``, ``html`` and ``text`` in a Jinja2 sandbox.

Templates are compiled once per batch. A variable that is printed while
undefined (and has no ``default``) fails that recipient: Sluice never sends
"Hi ,". Undefined values are still falsy, so ``{% if coupon %}`` works.
The HTML part autoescapes values (``|safe`` opts out); subject and text do not.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_RANGE = 1000  # the sandbox's own limit is 100,000; no marketing template needs more
MAX_RENDERED_BYTES = 2 * 1024 * 1024
MAX_SUBJECT_CHARS = 500


class RenderError(ValueError):
    """One recipient's data does not fit the templates; that recipient is rejected."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


class TemplateError(ValueError):
    """A template is broken or hostile for every recipient: the whole request is refused."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


class _Undefined(jinja2.StrictUndefined):
    """Strict on output, iteration and arithmetic; falsy in conditions."""

    def __bool__(self) -> bool:  # type: ignore[override]
        return False


def _bounded_range(*args: int) -> range:
    result = range(*args)
    if len(result) > MAX_RANGE:
        raise OverflowError(f"range() is limited to {MAX_RANGE} items in templates")
    return result


def _environment(autoescape: bool) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=_Undefined, autoescape=autoescape, keep_trailing_newline=True
    )
    env.globals["range"] = _bounded_range
    return env


_TEXT_ENV = _environment(autoescape=False)
_HTML_ENV = _environment(autoescape=True)


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str | None
    text: str | None


def _compile(env: jinja2.Environment, field: str, source: str) -> jinja2.Template:
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            field, f"template syntax error on line {exc.lineno}: {exc.message}"
        ) from exc
    except RecursionError as exc:
        raise TemplateError(field, "template is nested too deeply") from exc


def _run(template: jinja2.Template, field: str, data: dict[str, Any]) -> str:
    try:
        out = template.render(data)
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(field, f"template uses something the sandbox forbids: {exc}") from exc
    except jinja2.UndefinedError as exc:
        raise RenderError(field, f"undefined template variable: {exc.message}") from exc
    except (OverflowError, MemoryError, RecursionError) as exc:
        raise TemplateError(field, f"template is too expensive to render: {exc}") from exc
    except (TypeError, ValueError, ArithmeticError, LookupError, jinja2.TemplateError) as exc:
        raise RenderError(field, f"template failed for this recipient's data: {exc}") from exc
    if len(out) > MAX_RENDERED_BYTES:
        raise RenderError(field, f"rendered {field} is larger than {MAX_RENDERED_BYTES} bytes")
    return out


class Templates:
    """The compiled subject/html/text of one batch."""

    def __init__(self, subject: str, html: str | None, text: str | None) -> None:
        self.subject = _compile(_TEXT_ENV, "subject", subject)
        self.html = _compile(_HTML_ENV, "html", html) if html is not None else None
        self.text = _compile(_TEXT_ENV, "text", text) if text is not None else None

    def render(self, data: dict[str, Any]) -> Rendered:
        subject = _run(self.subject, "subject", data)
        if any(ch in subject for ch in "\r\n\0"):
            raise RenderError("subject", "rendered subject contains CR, LF or NUL")
        if len(subject) > MAX_SUBJECT_CHARS:
            raise RenderError("subject", f"rendered subject is over {MAX_SUBJECT_CHARS} characters")
        html = _run(self.html, "html", data) if self.html is not None else None
        text = _run(self.text, "text", data) if self.text is not None else None
        if (html is not None and "\0" in html) or (text is not None and "\0" in text):
            raise RenderError(
                "html" if html and "\0" in html else "text", "rendered body contains NUL"
            )
        return Rendered(subject=subject.strip(), html=html, text=text)


class TemplateCache:
    """Compiled templates by content digest, least recently used dropped first."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._items: OrderedDict[str, Templates] = OrderedDict()

    def get(self, subject: str, html: str | None, text: str | None) -> Templates:
        digest = hashlib.blake2b(
            "\0".join((subject, html or "\1", text or "\1")).encode(), digest_size=16
        ).hexdigest()
        found = self._items.get(digest)
        if found is not None:
            self._items.move_to_end(digest)
            return found
        templates = Templates(subject, html, text)
        self._items[digest] = templates
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return templates
