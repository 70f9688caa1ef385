"""Per-recipient rendering of ``subject``, ``html`` and ``text`` in a Jinja2 sandbox.

Templates are compiled once per batch. A variable that is printed while
undefined (and has no ``default``) fails that recipient: Sluice never sends
"Hi ,". Undefined values are still falsy, so ``{% if coupon %}`` works.
The HTML part autoescapes values (``|safe`` opts out); subject and text do not.

Templates come from API callers, so besides Jinja2's sandbox (no attribute
escapes) every render runs on a budget of time, output, value sizes and loop
iterations (``mta/template_budget.py``, enforced by the sandbox of
``mta/template_sandbox.py``), and ``include``/``import``/``extends``
are refused (there is nothing to load). Who is to blame when a render blows its
budget is not always plain: ``{% for p in products %}`` is cheap unless one
recipient has a million products. ``RenderOverBudget`` says it happened to this
recipient; ``Templates.expensive_without_data`` renders the part once more with
every variable undefined (and lenient) to tell whether the template alone is
too expensive, in which case the whole request is refused (``TemplateOverBudget``).
"""

from __future__ import annotations

import hashlib
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, cast

import jinja2
import markupsafe
from jinja2 import nodes

from mta import template_budget, template_sandbox
from mta.template_budget import MAX_PART_CHARS, MAX_TEMPLATE_TOKENS, Budget, TemplateBudgetError

MAX_SUBJECT_CHARS = 500


class RenderError(ValueError):
    """One recipient's data does not fit the templates; that recipient is rejected."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


class RenderOverBudget(RenderError):
    """This recipient's render blew a budget: because of its data, or of the template alone
    (``Templates.expensive_without_data`` tells)."""


class TemplateError(ValueError):
    """A template is broken or hostile for every recipient: the whole request is refused."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


class TemplateOverBudget(TemplateError):
    """The template is too expensive to render whatever the data, or the request's
    recipients together took longer than its budget."""


class _Undefined(jinja2.StrictUndefined):
    """Strict on output, iteration and arithmetic; falsy in conditions."""

    def __bool__(self) -> bool:  # type: ignore[override]
        return False


class _Lenient(jinja2.ChainableUndefined):
    """For telling the template's cost from the data's: prints nothing, iterates nothing."""


_TEXT_ENV = template_sandbox.environment(autoescape=False, undefined=_Undefined)
_HTML_ENV = template_sandbox.environment(autoescape=True, undefined=_Undefined)
_PLAIN_ENVS: dict[jinja2.Environment, jinja2.Environment] = {
    env: template_sandbox.environment(autoescape=auto, undefined=_Undefined, plain=True)
    for env, auto in ((_TEXT_ENV, False), (_HTML_ENV, True))
}
_LENIENT_ENVS = {
    "html": template_sandbox.environment(autoescape=True, undefined=_Lenient),
    "text": template_sandbox.environment(autoescape=False, undefined=_Lenient),
}


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str | None
    text: str | None


_FORBIDDEN = (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)
# Output can only outgrow the template through loops and macros (a macro may call itself);
# without them it is the template's own text plus the printed values, which ``finalize``
# already weighs one by one: such parts are joined in one go instead of chunk by chunk.
_REPEATING = (nodes.For, nodes.Macro, nodes.CallBlock)
_STRAIGHT: weakref.WeakSet[jinja2.Template] = weakref.WeakSet()

# A part that only prints recipient data (``{{ first_name | default("there") }}``, ``{{ a.b }}``)
# at a few places can do nothing expensive: its output is its own text plus at most
# ``_PLAIN_SITES`` values of data the request validated (64 KB a recipient, HTML escaping at
# most 6 times longer), so it renders without the per-value accounting (most templates).
_PLAIN_SITES = 32
_PLAIN_NODES = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.Name,
    nodes.Const,
    nodes.Getattr,
    nodes.Getitem,
)


def _plain(tree: nodes.Template) -> bool:
    sites = 0
    for node in tree.find_all(nodes.Node):
        if isinstance(node, nodes.Filter):
            if node.name != "default" or node.kwargs or node.dyn_args or node.dyn_kwargs:
                return False
            if not all(isinstance(arg, nodes.Const) for arg in node.args):
                return False
        elif not isinstance(node, _PLAIN_NODES):
            return False
    for output in tree.find_all(nodes.Output):
        sites += sum(not isinstance(child, nodes.TemplateData) for child in output.nodes)
    return sites <= _PLAIN_SITES


_NO_DEFAULT: Any = object()
# names Jinja binds itself, whatever the data says (``self``: the template's reference)
_JINJA_NAMES = frozenset({"self", "loop", "caller", "varargs", "kwargs", "super"})


@dataclass(frozen=True)
class Printer:
    """A plain template that prints data by name only (``{{ first_name }}``, ``{{ first_name
    | default("there") }}``: most templates), printed without Jinja: a render sets up a
    context, a generator and the budget's bookkeeping, ~5 us a part that this skips, three
    parts a message. For data whose printed values are strings (escaped in HTML as Jinja
    escapes them); anything else (a number, a name the data lacks and no default) gives
    None: Jinja prints it, or says what is wrong. Held equal to Jinja by a Hypothesis test."""

    statics: tuple[str, ...]  # the template's text around the values
    sites: tuple[tuple[str, Any], ...]  # (name, default or _NO_DEFAULT), in order
    escape: bool

    @classmethod
    def of(cls, tree: nodes.Template, env: jinja2.Environment) -> Printer | None:
        statics = [""]
        sites: list[tuple[str, Any]] = []
        for output in tree.body:
            if not isinstance(output, nodes.Output):
                return None
            for child in output.nodes:
                if isinstance(child, nodes.TemplateData):
                    statics[-1] += child.data
                    continue
                default: Any = _NO_DEFAULT
                printed: nodes.Node | None = child
                if (
                    isinstance(child, nodes.Filter)
                    and child.name == "default"
                    and len(child.args) == 1
                    and not child.kwargs
                    and child.dyn_args is None
                    and child.dyn_kwargs is None
                    and isinstance(child.args[0], nodes.Const)
                    and type(child.args[0].value) is str
                ):
                    default, printed = child.args[0].value, child.node
                if (
                    not isinstance(printed, nodes.Name)
                    or printed.name in env.globals
                    or printed.name in _JINJA_NAMES
                ):
                    return None  # an attribute, a constant, a global: Jinja's to print
                sites.append((printed.name, default))
                statics.append("")
        return cls(tuple(statics), tuple(sites), env.autoescape is True)

    def values(self, data: dict[str, Any]) -> list[str] | None:
        out: list[str] = []
        for name, default in self.sites:
            value = data.get(name, default)
            if type(value) is not str or "\0" in value:
                return None
            out.append(str(markupsafe.escape(value)) if self.escape else value)
        return out

    def render(self, data: dict[str, Any]) -> str | None:
        values = self.values(data)
        if values is None:
            return None
        out = [self.statics[0]]
        for value, text in zip(values, self.statics[1:], strict=True):
            out += (value, text)
        return "".join(out)


# every plain template (``_plain``), with its printer (None: it prints more than data by name)
_PRINTERS: weakref.WeakKeyDictionary[jinja2.Template, Printer | None]
_PRINTERS = weakref.WeakKeyDictionary()


def printer(template: jinja2.Template) -> Printer | None:
    """The ``Printer`` of a plain template; None for any other."""
    return _PRINTERS.get(template)


def _compile(env: jinja2.Environment, field: str, source: str) -> jinja2.Template:
    try:
        for count, _ in enumerate(env.lex(source)):
            if count >= MAX_TEMPLATE_TOKENS:  # lexing is fast; parsing and compiling are not
                raise TemplateOverBudget(
                    field, f"template has more than {MAX_TEMPLATE_TOKENS} tokens to compile"
                )
        tree = env.parse(source)
        for node in tree.find_all(_FORBIDDEN):
            kind = type(node).__name__.lower().replace("fromimport", "import")
            raise TemplateError(
                field, f"'{kind}' is not supported in templates (line {node.lineno})"
            )
        internal = template_sandbox.internal_name(tree)
        if internal is not None:
            raise TemplateError(
                field, f"the name {internal.name!r} is reserved (line {internal.lineno})"
            )
        template_sandbox.instrument(tree)
        plain = _plain(tree)
        if plain:
            env = _PLAIN_ENVS[env]
        tree.set_environment(env)
        straight = next(tree.find_all(_REPEATING), None) is None
        code = env.compile(tree)
        # A plain dict: Jinja's default ChainMap is copied key by key on every render.
        template = env.template_class.from_code(env, code, dict(env.make_globals(None)), None)
        if straight:
            _STRAIGHT.add(template)
        if plain:
            _PRINTERS[template] = Printer.of(tree, env)
        return template
    except TemplateError:
        raise
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            field, f"template syntax error on line {exc.lineno}: {exc.message}"
        ) from exc
    except TemplateBudgetError as exc:
        raise TemplateOverBudget(field, f"template is too expensive: {exc.reason}") from exc
    except (RecursionError, MemoryError, ValueError, OverflowError, TypeError) as exc:
        raise TemplateError(field, f"template cannot be compiled: {exc}") from exc


def _stream(
    template: jinja2.Template, field: str, data: dict[str, Any], budget: Budget | None
) -> str:
    """The part, through Jinja's generator: stopped as soon as it is over ``MAX_PART_CHARS``
    or late. ``budget`` None: a part of a template whose parts are all plain (``_plain``)."""
    if budget is not None:
        budget.next_part()
    chunks = cast("Generator[str]", template.root_render_func(template.new_context(data)))
    try:
        if (
            budget is None or template in _STRAIGHT
        ):  # bounded by the source and MAX_BUILT_CHARS: see _REPEATING
            whole = "".join(chunks)
            if len(whole) > MAX_PART_CHARS:
                raise TemplateBudgetError(
                    f"the rendered {field} would be larger than {MAX_PART_CHARS} characters"
                )
            return whole
        out: list[str] = []
        size = 0
        for chunk in chunks:
            size += len(chunk)
            if size > MAX_PART_CHARS:
                raise TemplateBudgetError(
                    f"the rendered {field} would be larger than {MAX_PART_CHARS} characters"
                )
            if time.monotonic() > budget.deadline:
                budget.tick()  # raises
            out.append(chunk)
        return "".join(out)
    finally:
        chunks.close()


def _run(template: jinja2.Template, field: str, data: dict[str, Any], budget: Budget | None) -> str:
    try:
        return _stream(template, field, data, budget)
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(field, f"template uses something the sandbox forbids: {exc}") from exc
    except jinja2.UndefinedError as exc:
        raise RenderError(field, f"undefined template variable: {exc.message}") from exc
    except TemplateBudgetError as exc:
        if exc.request:
            raise TemplateOverBudget(field, exc.reason) from exc
        raise RenderOverBudget(field, f"template is too expensive to render: {exc.reason}") from exc
    except (OverflowError, MemoryError, RecursionError) as exc:
        raise RenderOverBudget(field, f"template is too expensive to render: {exc}") from exc
    except (TypeError, ValueError, ArithmeticError, LookupError, jinja2.TemplateError) as exc:
        raise RenderError(field, f"template failed for this recipient's data: {exc}") from exc


def _checked_subject(subject: str) -> str:
    """A rendered subject, trimmed, if a header can carry it; else RenderError."""
    if any(ch in subject for ch in "\r\n\0"):
        raise RenderError("subject", "rendered subject contains CR, LF or NUL")
    if len(subject) > MAX_SUBJECT_CHARS:
        raise RenderError("subject", f"rendered subject is over {MAX_SUBJECT_CHARS} characters")
    return subject.strip()


class Templates:
    """The compiled subject/html/text of one batch."""

    def __init__(self, subject: str, html: str | None, text: str | None) -> None:
        self.sources = {"subject": subject, "html": html, "text": text}
        self.subject = _compile(_TEXT_ENV, "subject", subject)
        self.html = _compile(_HTML_ENV, "html", html) if html is not None else None
        self.text = _compile(_TEXT_ENV, "text", text) if text is not None else None
        self._alone: dict[str, str | None] = {}  # field -> why it is too expensive without data
        # Parts that only print data need no budget: none to draw from, none to set up.
        self.plain = all(t in _PRINTERS for t in (self.subject, self.html, self.text) if t)

    def render(self, data: dict[str, Any], *, deadline: float | None = None) -> Rendered:
        """Render for one recipient within ``MAX_RENDER_SECONDS`` (or by the earlier
        monotonic ``deadline`` of the whole request)."""
        budget = None if self.plain else Budget(deadline)
        token = template_budget.start(budget)
        try:
            subject = self._subject(data, budget)
            html = _run(self.html, "html", data, budget) if self.html is not None else None
            text = _run(self.text, "text", data, budget) if self.text is not None else None
        finally:
            template_budget.stop(token)
        if (html is not None and "\0" in html) or (text is not None and "\0" in text):
            raise RenderError(
                "html" if html and "\0" in html else "text", "rendered body contains NUL"
            )
        return Rendered(subject=subject, html=html, text=text)

    def render_subject(self, data: dict[str, Any]) -> str:
        """The subject alone, checked as ``render`` checks it (for a plain template, whose
        parts ``mta.compose`` renders its own way)."""
        printed = printer(self.subject)
        subject = printed.render(data) if printed is not None else None
        if subject is not None:
            return _checked_subject(subject)
        budget = None if self.plain else Budget()
        token = template_budget.start(budget)
        try:
            return self._subject(data, budget)
        finally:
            template_budget.stop(token)

    def _subject(self, data: dict[str, Any], budget: Budget | None) -> str:
        return _checked_subject(_run(self.subject, "subject", data, budget))

    def expensive_without_data(self, field: str) -> str | None:
        """Why ``field`` blows its budget with no recipient data at all (every variable
        undefined, printing as nothing and iterating as empty); None if it does not. Rendered
        once per template and field, on demand."""
        if field not in self._alone:
            source = self.sources[field]
            env = _LENIENT_ENVS["html" if field == "html" else "text"]
            budget = Budget()
            token = template_budget.start(budget)
            try:
                _run(_compile(env, field, source or ""), field, {}, budget)
            except (RenderOverBudget, TemplateOverBudget) as exc:
                self._alone[field] = exc.detail
            except (RenderError, TemplateError):
                self._alone[field] = None
            else:
                self._alone[field] = None
            finally:
                template_budget.stop(token)
        return self._alone[field]


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
