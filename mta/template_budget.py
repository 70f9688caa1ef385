"""What one template render may cost, and the checks that keep it within that.

Templates come from API callers and run once per recipient, at accept time on the
gateway's single prepare thread and again at delivery in a worker, so a template
that asks for gigabytes or minutes must be stopped before it gets them, not
measured afterwards. Every render runs under a ``Budget``:

* **Output**: a part (subject, html, text) is rendered through Jinja's generator
  and stops as soon as it passes ``MAX_PART_CHARS``.
* **Values**: no single string or bytes value over ``MAX_VALUE_CHARS``, and no
  list, tuple or dict over ``MAX_ITEMS`` entries, can be built. Each operation that
  can grow a value is checked *before* it runs, from the sizes of its operands:
  ``~`` (compiled as a call to ``concat`` below), ``+``, ``*`` and ``%`` (the
  sandbox's intercepted operators), ``str.format``, the string-growing filters
  (``replace``, ``join``, ``format``, ``center``, ``indent``, ``wordwrap``,
  ``urlize``, ``sum``) and ``str``/``bytes`` methods (``replace``, ``join``,
  ``center``, ``ljust``, ``rjust``, ``zfill``, ``expandtabs``, ``translate``).
  Whatever converts a value to text (output, ``~``, ``string``, ``join``, every
  text filter) or compares it (``==``, ``in``, ``sort``, ``unique``, ...) first
  weighs it: a list holding the same 1 MB string a thousand times weighs 1 GB
  even though it was cheap to build, and is refused.
* **Everything built**: the sizes of all values built, printed and looped over
  add up per part; over ``MAX_BUILT_CHARS`` the render stops (this is what ends
  ``{% set s = s ~ x %}`` in a loop, or a macro that buffers output in a loop).
* **Iterations**: every ``for`` loop, recursive ``loop()`` call and iterating
  filter (``map``, ``select``, ``batch``, ``slice``, ``groupby``, ``sum``,
  ``unique``, ``list``, ``join``, ``sort``, ...) draws from ``MAX_LOOP_ITERATIONS``
  per part; ``range()`` is limited to ``MAX_RANGE``.
* **Compiling**: a part of more than ``MAX_TEMPLATE_TOKENS`` tokens is refused
  before it is parsed (compiling 1 MB of ``{{ a }}`` took 11 s; 20,000 tokens take
  about 0.3 s).
* **Time**: a monotonic deadline, ``MAX_RENDER_SECONDS`` per recipient (all three
  parts), checked by the loop counter, the output stream and every interceptor
  (calls, filters, operators, printed values). ``prepare`` adds a deadline for all
  the recipients of one request, ``MAX_REQUEST_RENDER_SECONDS``.

Measured on the 2-core development machine with the cart-reminder fixture
(``loadtests/fixtures/cart-reminder.json``: subject, 13 KB html, text), CPU time,
best of 15: one recipient renders in 0.017 ms with these checks (0.0115 ms
without), a 1,000-recipient batch in 17 ms (``prepare`` of that batch, validation
included, 33 ms). The per-recipient budget is ~15,000 times what the fixture
needs; the per-request budget ~175 times a full 1,000-recipient batch of it, so a
template 20 times heavier than the fixture still fits with 9x to spare. No single
operation runs long enough to matter between two checks: values are bounded, and
the slowest pure-Python text filters (``urlize``, ``wordwrap``, ``title``,
``pprint``, ...) take at most ``MAX_TEXT_FILTER_CHARS`` (``urlize`` took 0.8 s
on 2 MB, 0.1 s on 256 KB).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, ValuesView
from contextvars import ContextVar, Token
from string import Formatter
from typing import Any

from jinja2.runtime import markup_join, str_join
from jinja2.utils import Namespace, generate_lorem_ipsum, pass_eval_context
from markupsafe import Markup, escape

MAX_RENDER_SECONDS = 0.25  # per recipient: subject, html and text together
MAX_REQUEST_RENDER_SECONDS = 3.0  # all the recipients of one request, in ``prepare``
MAX_PART_CHARS = 2 * 1024 * 1024  # rendered subject, html or text
MAX_VALUE_CHARS = MAX_PART_CHARS  # any one string (or bytes) built while rendering
MAX_ITEMS = 100_000  # any one list, tuple or dict built while rendering
MAX_BUILT_CHARS = 8 * MAX_PART_CHARS  # all values one part builds and prints, added up
MAX_LOOP_ITERATIONS = 100_000  # per part and recipient: loops and iterating filters together
MAX_RANGE = 1000  # the sandbox's own limit is 100,000; no marketing template needs more
MAX_INT_BITS = 4096
MAX_WIDTH = 10_000  # widths and indents in filters, methods and format specs
MAX_TEXT_FILTER_CHARS = 256 * 1024  # input of the slow pure-Python text filters
MAX_LIPSUM_WORDS = 20_000
MAX_TEMPLATE_TOKENS = 20_000  # per part; compiling takes ~15 us a token (the fixture has 26)

# Names of the helpers the instrumented templates call; refused in template sources.
LOOP = "_sluice_loop"
CONCAT = "_sluice_concat"
COMPARED = "_sluice_compared"

# %-format and str.format width or precision of five digits or more
_FORMAT_WIDTH = re.compile(r"%[-#0 +]*\d{5}|%[-#0 +]*\d*\.\d{5}|%[-#0 +]*\*")
FORMAT_SPEC = re.compile(r"\{[^{}]*:[^{}]*(?:\d{5}|\{)")
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\d*)(?:\.(\d*))?[hlL]?(.)", re.S)
_DIGITS = re.compile(r"\d+")
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines splits on
WEIGHED = (list, tuple, dict, set, frozenset, KeysView, ValuesView, ItemsView, Namespace)
_SMALL = 16  # the printed size of anything else (floats, loop objects, macros, ...)


class TemplateBudgetError(Exception):
    """The template asked for more work than any message needs.

    ``request`` is true when the deadline of the whole request, not this recipient's
    own, ran out."""

    def __init__(self, reason: str, *, request: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request = request


class Budget:
    """What one recipient's render may still spend: a deadline for the three parts, and
    iterations and built characters per part (``next_part``)."""

    __slots__ = ("built", "deadline", "iterations", "request_bound", "seconds", "weights")

    def __init__(self, request_deadline: float | None = None) -> None:
        """``request_deadline``: the monotonic deadline of the whole request, if any."""
        self.deadline = time.monotonic() + MAX_RENDER_SECONDS
        self.seconds = MAX_RENDER_SECONDS  # the budget the deadline comes from, for messages
        self.request_bound = request_deadline is not None and request_deadline < self.deadline
        if self.request_bound:
            self.deadline = request_deadline  # type: ignore[assignment]
            self.seconds = MAX_REQUEST_RENDER_SECONDS
        self.iterations = 0
        self.built = 0
        self.weights: dict[int, tuple[Any, int]] = {}  # id -> (the value, kept alive; weight)

    def next_part(self) -> None:
        self.iterations = 0
        self.built = 0
        self.weights.clear()

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            if self.request_bound:
                raise TemplateBudgetError(
                    f"rendering the recipients of this request took more than {self.seconds:g} s"
                    " in all; send fewer recipients per request or a cheaper template",
                    request=True,
                )
            raise TemplateBudgetError(f"rendering took more than {self.seconds:g} s")

    def iterate(self, count: int = 1) -> None:
        self.iterations += count
        if self.iterations > MAX_LOOP_ITERATIONS:
            raise TemplateBudgetError(f"loops ran more than {MAX_LOOP_ITERATIONS} iterations")
        self.tick()

    def build(self, size: int) -> None:
        self.built += size
        if self.built > MAX_BUILT_CHARS:
            raise TemplateBudgetError(
                f"the values the template builds add up to more than {MAX_BUILT_CHARS} characters"
            )


_current: ContextVar[Budget | None] = ContextVar("sluice_template_budget", default=None)


def start(budget: Budget | None) -> Token[Budget | None]:
    """Make ``budget`` the one this thread's render draws from (None: no budget, for plain
    templates that cannot spend one)."""
    return _current.set(budget)


def stop(token: Token[Budget | None]) -> None:
    _current.reset(token)


def tick() -> None:
    budget = _current.get()
    if budget is not None:
        budget.tick()


def iterate(count: int) -> None:
    budget = _current.get()
    if budget is not None:
        budget.iterate(count)


def refuse_over(
    size: int, what: str, limit: int = MAX_VALUE_CHARS, unit: str = "characters"
) -> None:
    if size > limit:
        raise TemplateBudgetError(f"{what} would build a value of more than {limit} {unit}")


# --- sizes ------------------------------------------------------------------------------------


def weight(value: Any) -> int:
    """An upper bound on the length of ``str(value)``, and so on the work of comparing or
    hashing it; counting stops a little past ``MAX_VALUE_CHARS``. Lists, tuples and dicts
    cannot change in the immutable sandbox, so each is weighed once per render."""
    if isinstance(value, str | bytes):
        return len(value)
    if not isinstance(value, WEIGHED):
        return value.bit_length() // 3 + 2 if isinstance(value, int) else _SMALL
    budget = _current.get()
    return _weigh(value, {} if budget is None else budget.weights)


def _weigh(value: Any, memo: dict[int, tuple[Any, int]]) -> int:
    if isinstance(value, str | bytes):
        return len(value) + 4  # quotes and a separator
    if not isinstance(value, WEIGHED):
        return weight(value) + 2
    if id(value) in memo:
        return memo[id(value)][1]
    items: Iterable[Any]
    if isinstance(value, Namespace):  # changes as the template runs: never remembered
        items = _flat(object.__getattribute__(value, "_Namespace__attrs"))
    else:
        items = _flat(value) if isinstance(value, dict) else value
    total = 2
    for item in items:
        total += _weigh(item, memo) + 2
        if total > MAX_VALUE_CHARS:
            break
    if not isinstance(value, Namespace):
        memo[id(value)] = (value, total)
    return total


def _flat(mapping: dict[Any, Any]) -> Iterator[Any]:
    for key, value in mapping.items():
        yield key
        yield value


def weighed(value: Any, what: str) -> Any:
    """``value``, refused if printing or comparing it would cost more than the value limit."""
    if isinstance(value, (str, bytes, *WEIGHED)) and weight(value) > MAX_VALUE_CHARS:
        raise TemplateBudgetError(
            f"{what} was given a value of more than {MAX_VALUE_CHARS} characters"
        )
    return value


def built(value: Any, what: str, *, new: bool = True) -> Any:
    """``value``, just returned by ``what``: refused if it is over the limits, and counted
    towards ``MAX_BUILT_CHARS`` if ``new`` (not a value that existed before, such as what
    ``dict.get`` or ``first`` returns)."""
    if isinstance(value, str | bytes):
        refuse_over(len(value), what)
    elif isinstance(value, list | tuple | dict | set | frozenset):
        refuse_over(len(value), what, MAX_ITEMS, "items")
    else:
        return value
    budget = _current.get()
    if new and budget is not None:
        budget.build(len(value))
    return value


# --- loops ------------------------------------------------------------------------------------


def counted(iterable: Iterable[Any], static: int = 0) -> Iterator[Any]:
    """Every ``for`` loop iterates through this. ``static`` is the size of the template text
    in the loop's body, which each iteration outputs (into the part, or a macro's buffer)."""
    budget = _current.get()
    static = static if type(static) is int and static > 0 else 0
    for item in iterable:
        if budget is not None:
            budget.iterate()
            if static:
                budget.build(static)
        yield item


def counted_input(value: Any) -> Any:
    """What a filter or method will iterate, counted: a sized value's length now, an
    iterator's items as they come."""
    if hasattr(value, "__next__"):
        return counted(value)
    try:
        size = len(value)
    except TypeError:
        return value
    iterate(size)
    return value


def bounded_range(*args: int) -> range:
    result = range(*args)
    if len(result) > MAX_RANGE:
        raise TemplateBudgetError(f"range() is limited to {MAX_RANGE} items in templates")
    return result


def bounded_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    if n * max > MAX_LIPSUM_WORDS:
        raise TemplateBudgetError(f"lipsum() is limited to {MAX_LIPSUM_WORDS} words")
    return generate_lorem_ipsum(n, html, min, max)


# --- what a string operation will build, known before it runs -----------------------------------


def check_replace(text: Any, old: Any, new: Any, count: Any, what: str) -> None:
    if isinstance(text, Markup):  # Markup.replace escapes its arguments
        old, new = escape(old), escape(new)
    same = str if isinstance(text, str) else bytes
    if not (isinstance(old, same) and isinstance(new, same) and isinstance(count, int)):
        return  # Python refuses the call itself
    grows = len(new) - len(old)
    if grows <= 0:
        return
    found = len(text) + 1 if not old else text.count(old)
    refuse_over(len(text) + (found if count < 0 else min(found, count)) * grows, what)


def check_join(separator: Any, items: list[Any], what: str) -> None:
    size = sum(weight(item) for item in items)
    if isinstance(separator, str | bytes):
        size += len(separator) * max(len(items) - 1, 0)
    refuse_over(size, what)


def line_count(text: str) -> int:
    return sum(text.count(ch) for ch in _LINE_BREAKS) + 1


def check_width(width: Any, what: str) -> None:
    if isinstance(width, int) and not isinstance(width, bool) and width > MAX_WIDTH:
        raise TemplateBudgetError(f"{what} is limited to widths of {MAX_WIDTH}")


def _largest(values: Iterable[Any]) -> int:
    return max((weight(v) for v in values), default=0)


def check_percent(fmt: str, args: Any, what: str) -> None:
    """``fmt % args``: each conversion prints one argument, padded to its width."""
    if _FORMAT_WIDTH.search(fmt):
        raise TemplateBudgetError("a format width in the template is too large")
    values = (
        args.values() if isinstance(args, dict) else args if isinstance(args, tuple) else (args,)
    )
    largest = _largest(values)
    if len(fmt) + fmt.count("%") * (largest + 2 * MAX_WIDTH) <= MAX_VALUE_CHARS:
        return  # the quick bound will do
    size = len(fmt)
    for match in _PERCENT_SPEC.finditer(fmt):
        iterate(1)
        if match.group(3) != "%":
            size += largest + int(match.group(1) or 0) + int(match.group(2) or 0) + 32
    refuse_over(size, what)


def check_str_format(fmt: str, values: Iterable[Any], what: str) -> None:
    """``fmt.format(...)``: each replacement field prints one argument (or part of one)."""
    largest = _largest(values)
    if len(fmt) + fmt.count("{") * (largest + 2 * MAX_WIDTH) <= MAX_VALUE_CHARS:
        return
    size = len(fmt)
    for _, field, spec, _ in Formatter().parse(fmt):
        iterate(1)
        if field is not None:
            size += largest + sum(int(d) for d in _DIGITS.findall(spec or "")) + 32
    refuse_over(size, what)


# str and bytes methods that grow their value: each checks (and may replace) the arguments

Arguments = tuple[tuple[Any, ...], dict[str, Any]]


def _method_replace(text: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Arguments:
    if len(args) >= 2:
        count = kwargs.get("count", args[2] if len(args) > 2 else -1)
        check_replace(text, args[0], args[1], count, "replace()")
    return args, kwargs


def _method_join(text: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Arguments:
    if len(args) != 1:
        return args, kwargs
    items = list(counted_input(args[0]))
    check_join(text, items, "join()")
    return (items,), kwargs


def _method_width(text: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Arguments:
    for width in (*args[:1], *kwargs.values()):
        check_width(width, "center(), ljust(), rjust() and zfill()")
    return args, kwargs


def _method_expandtabs(text: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Arguments:
    size = kwargs.get("tabsize", args[0] if args else 8)
    if isinstance(size, int):
        check_width(size, "expandtabs()")
        tab = "\t" if isinstance(text, str) else b"\t"
        refuse_over(len(text) + text.count(tab) * max(size, 0), "expandtabs()")
    return args, kwargs


def _method_translate(text: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Arguments:
    if args and isinstance(text, str) and isinstance(args[0], dict):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
        refuse_over(len(text) * longest, "translate()")
    return args, kwargs


METHOD_CHECKS: dict[str, Callable[[Any, tuple[Any, ...], dict[str, Any]], Arguments]] = {
    "replace": _method_replace,
    "join": _method_join,
    "center": _method_width,
    "ljust": _method_width,
    "rjust": _method_width,
    "zfill": _method_width,
    "expandtabs": _method_expandtabs,
    "translate": _method_translate,
}


# --- what the instrumented templates call ------------------------------------------------------


@pass_eval_context
def concat(eval_ctx: Any, *values: Any) -> str:
    """``a ~ b ~ c``: what Jinja compiles it to (``str_join`` or ``markup_join``), once the
    size of the result is known to be within the limit."""
    refuse_over(sum(weight(v) for v in values), "'~'")
    return (markup_join if eval_ctx.autoescape else str_join)(values)


def compared(value: Any) -> Any:
    """An operand of ``==``, ``<``, ``in``, ...: comparing containers costs their size."""
    if isinstance(value, WEIGHED) and weight(value) > MAX_VALUE_CHARS:
        raise TemplateBudgetError(
            f"a comparison in the template involves a value of more than {MAX_VALUE_CHARS} characters"
        )
    return value


def finalize(value: Any) -> Any:
    """Every ``{{ ... }}`` value on its way to the output (or into a macro's buffer). On the
    path of every printed value, so written out rather than calling the helpers."""
    budget = _current.get()
    if budget is None:
        return value  # a constant, finalized at compile time
    size = len(value) if type(value) is str else weight(value)
    if size > MAX_VALUE_CHARS:
        raise TemplateBudgetError(f"a printed value has more than {MAX_VALUE_CHARS} characters")
    budget.built += size
    if budget.built > MAX_BUILT_CHARS:
        budget.build(0)  # raises
    if time.monotonic() > budget.deadline:
        budget.tick()  # raises
    return value


# --- operators ------------------------------------------------------------------------------


def check_power(left: Any, right: Any) -> None:
    if not (isinstance(left, int) and isinstance(right, int)) or right <= 0 or abs(left) < 2:
        return
    if right * abs(left).bit_length() > MAX_INT_BITS:
        raise TemplateBudgetError("a power in the template is too large")


def check_repeat(left: Any, right: Any) -> None:
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise TemplateBudgetError("a product in the template is too large")
        return
    if isinstance(right, int) and isinstance(left, str | bytes | list | tuple):
        seq, count = left, right
    elif isinstance(left, int) and isinstance(right, str | bytes | list | tuple):
        seq, count = right, left
    else:
        return
    if isinstance(seq, str | bytes):
        refuse_over(len(seq) * count, "a repetition ('*')")
    else:
        refuse_over(len(seq) * count, "a repetition ('*')", MAX_ITEMS, "items")


def check_add(left: Any, right: Any) -> None:
    if isinstance(left, str | bytes) and isinstance(right, str | bytes):
        refuse_over(len(left) + len(right), "'+'")
    elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
        refuse_over(len(left) + len(right), "'+'", MAX_ITEMS, "items")
    elif (
        isinstance(left, int)
        and isinstance(right, int)
        and max(left.bit_length(), right.bit_length()) >= MAX_INT_BITS
    ):
        raise TemplateBudgetError("a sum in the template is too large")
