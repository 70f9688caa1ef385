"""Per-recipient rendering of ``subject``, ``html`` and ``text`` in a Jinja2 sandbox.

Templates are compiled once per batch. A variable that is printed while
undefined (and has no ``default``) fails that recipient: Sluice never sends
"Hi ,". Undefined values are still falsy, so ``{% if coupon %}`` works.
The HTML part autoescapes values (``|safe`` opts out); subject and text do not.

Templates come from API callers, so besides Jinja2's sandbox (no attribute
escapes) they run on a budget: every ``for`` loop draws from one iteration
budget per render, ``range()`` is bounded, ``**``, ``*`` and ``%`` refuse results
that would be huge, and ``include``/``import``/``extends`` are refused (there
is nothing to load). A template that blows a budget is refused as a whole.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_RANGE = 1000  # the sandbox's own limit is 100,000; no marketing template needs more
MAX_LOOP_ITERATIONS = 100_000  # per part and recipient, all loops together
MAX_RENDERED_BYTES = 2 * 1024 * 1024
MAX_SUBJECT_CHARS = 500
MAX_INT_BITS = 4096
_BUDGET_NAME = "_sluice_loop"
MAX_WIDTH = 10_000  # widths and indents in filters and format specs
# %-format and str.format width or precision of five digits or more
_FORMAT_WIDTH = re.compile(r"%[-#0 +]*\d{5}|%[-#0 +]*\d*\.\d{5}|%[-#0 +]*\*")
_FORMAT_SPEC = re.compile(r"\{[^{}]*:[^{}]*(?:\d{5}|\{)")

_iterations: ContextVar[int] = ContextVar("sluice_template_iterations", default=0)


class TemplateBudgetError(Exception):
    """The template asked for more work than any message needs."""


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
        raise TemplateBudgetError(f"range() is limited to {MAX_RANGE} items in templates")
    return result


def _counted(iterable: Iterable[Any]) -> Iterator[Any]:
    """Every ``for`` loop iterates through this: one budget for all loops of a render."""
    for item in iterable:
        spent = _iterations.get() + 1
        if spent > MAX_LOOP_ITERATIONS:
            raise TemplateBudgetError(f"loops ran more than {MAX_LOOP_ITERATIONS} iterations")
        _iterations.set(spent)
        yield item


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple) else 0


class _BudgetedSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"**", "*", "%"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(left, int) and isinstance(right, int):
            if (
                right > 0
                and abs(left) > 1
                and right * max(abs(left).bit_length(), 1) > MAX_INT_BITS
            ):
                raise TemplateBudgetError("a power in the template is too large")
        elif operator == "*":
            count = right if _size(left) else left if _size(right) else None
            if (
                isinstance(count, int)
                and count * max(_size(left), _size(right)) > MAX_RENDERED_BYTES
            ):
                raise TemplateBudgetError("a repetition in the template is too large")
            both_ints = isinstance(left, int) and isinstance(right, int)
            if both_ints and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise TemplateBudgetError("a product in the template is too large")
        elif operator == "%" and isinstance(left, str) and _FORMAT_WIDTH.search(left):
            raise TemplateBudgetError("a format width in the template is too large")
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Any:
        """``str.format`` and ``format_map``: no huge widths, no widths taken from arguments."""
        wrapped = super().wrap_str_format(value)
        if wrapped is not None and _FORMAT_SPEC.search(value.__self__):
            raise TemplateBudgetError("format widths must be small literal numbers in templates")
        return wrapped


def _bounded_filter(env: jinja2.Environment, name: str) -> None:
    """Refuse the width arguments of a filter that would allocate gigabytes."""
    original = env.filters[name]

    @functools.wraps(original)  # keeps Jinja's pass_environment marker
    def bounded(*args: Any, **kwargs: Any) -> Any:
        for arg in (*args, *kwargs.values()):
            if isinstance(arg, int) and not isinstance(arg, bool) and arg > MAX_WIDTH:
                raise TemplateBudgetError(f"'{name}' is limited to widths of {MAX_WIDTH}")
            if name == "format" and isinstance(arg, str) and _FORMAT_WIDTH.search(arg):
                raise TemplateBudgetError("a format width in the template is too large")
        return original(*args, **kwargs)

    env.filters[name] = bounded


def _environment(autoescape: bool) -> ImmutableSandboxedEnvironment:
    env = _BudgetedSandbox(undefined=_Undefined, autoescape=autoescape, keep_trailing_newline=True)
    env.globals["range"] = _bounded_range
    env.globals[_BUDGET_NAME] = _counted
    for name in ("center", "indent", "format", "wordwrap", "truncate"):
        _bounded_filter(env, name)
    return env


_TEXT_ENV = _environment(autoescape=False)
_HTML_ENV = _environment(autoescape=True)


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str | None
    text: str | None


_FORBIDDEN = (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)


def _compile(env: jinja2.Environment, field: str, source: str) -> jinja2.Template:
    try:
        tree = env.parse(source)
        for node in tree.find_all(_FORBIDDEN):
            kind = type(node).__name__.lower().replace("fromimport", "import")
            raise TemplateError(
                field, f"'{kind}' is not supported in templates (line {node.lineno})"
            )
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Call(
                nodes.Name(_BUDGET_NAME, "load"), [loop.iter], [], None, None, lineno=loop.lineno
            )
        code = env.compile(tree)
        # A plain dict: Jinja's default ChainMap is copied key by key on every render.
        return env.template_class.from_code(env, code, dict(env.make_globals(None)), None)
    except TemplateError:
        raise
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            field, f"template syntax error on line {exc.lineno}: {exc.message}"
        ) from exc
    except TemplateBudgetError as exc:
        raise TemplateError(field, f"template is too expensive: {exc}") from exc
    except (RecursionError, MemoryError, ValueError, OverflowError, TypeError) as exc:
        raise TemplateError(field, f"template cannot be compiled: {exc}") from exc


def _run(template: jinja2.Template, field: str, data: dict[str, Any]) -> str:
    budget = _iterations.set(0)
    try:
        out = template.render(data)
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(field, f"template uses something the sandbox forbids: {exc}") from exc
    except jinja2.UndefinedError as exc:
        raise RenderError(field, f"undefined template variable: {exc.message}") from exc
    except (TemplateBudgetError, OverflowError, MemoryError, RecursionError) as exc:
        raise TemplateError(field, f"template is too expensive to render: {exc}") from exc
    except (TypeError, ValueError, ArithmeticError, LookupError, jinja2.TemplateError) as exc:
        raise RenderError(field, f"template failed for this recipient's data: {exc}") from exc
    finally:
        _iterations.reset(budget)
    if len(out) > MAX_RENDERED_BYTES:
        # Output size is the template's doing, not one recipient's: refuse it once.
        raise TemplateError(field, f"rendered {field} is larger than {MAX_RENDERED_BYTES} bytes")
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
    """Compiled templates by content digest, least recently used dropped first. Thread-safe."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._items: OrderedDict[str, Templates] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, subject: str, html: str | None, text: str | None) -> Templates:
        digest = hashlib.blake2b(
            "\0".join((subject, html or "\1", text or "\1")).encode(), digest_size=16
        ).hexdigest()
        with self._lock:
            found = self._items.get(digest)
            if found is not None:
                self._items.move_to_end(digest)
                return found
        templates = Templates(subject, html, text)  # compile outside the lock
        with self._lock:
            self._items[digest] = templates
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        return templates
