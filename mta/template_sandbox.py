"""The Jinja2 sandbox Sluice renders templates in, wired to the render budget.

``environment()`` is Jinja's immutable sandbox with every operation that can grow a
value or take long routed through ``mta/template_budget.py``: the intercepted
operators (``**``, ``*``, ``%``, ``+``), every call (``str``/``bytes`` methods,
macros, recursive loops), ``str.format``, every filter (each wrapped: weighed,
counted, size-checked before it runs where its growth is known) and the comparing
tests. ``instrument()`` rewrites a parsed template so the rest goes through the
budget too: each ``for`` loop's iterable, each ``~`` (Jinja would join the strings
inline) and each operand of a comparison.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

from jinja2 import nodes
from jinja2.filters import make_attrgetter
from jinja2.runtime import Context, LoopContext, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import pass_context
from jinja2.visitor import NodeTransformer
from markupsafe import escape, soft_str

from mta import template_budget as budget
from mta.template_budget import (
    COMPARED,
    CONCAT,
    LOOP,
    MAX_BUILT_CHARS,
    MAX_ITEMS,
    MAX_TEXT_FILTER_CHARS,
    TemplateBudgetError,
    built,
    compared,
    concat,
    counted,
    finalize,
    weighed,
    weight,
)

# --- filters and tests --------------------------------------------------------------------------

# Filters that only look at, pick from or pass on their input: no need to weigh it.
_STRUCTURAL = frozenset(
    [
        "abs",
        "attr",
        "batch",
        "count",
        "d",
        "default",
        "filesizeformat",
        "first",
        "float",
        "int",
        "items",
        "last",
        "length",
        "list",
        "map",
        "random",
        "reject",
        "rejectattr",
        "reverse",
        "round",
        "select",
        "selectattr",
        "slice",
    ]
)
# Filters that return (part of) what they were given rather than something new.
_PICKS = frozenset(["attr", "d", "default", "first", "last", "random", "safe"])
# Filters that iterate their whole input: one iteration per item.
_ITERATING = frozenset(
    [
        "batch",
        "dictsort",
        "groupby",
        "join",
        "list",
        "map",
        "max",
        "min",
        "reject",
        "rejectattr",
        "select",
        "selectattr",
        "slice",
        "sort",
        "sum",
        "unique",
    ]
)
# Filters whose integer arguments are widths, line lengths or amounts of padding.
_WIDTHS = frozenset(["batch", "center", "indent", "slice", "wordwrap"])
# Pure-Python or regex text filters: up to a second on 2 MB, with no deadline check inside.
_SLOW_TEXT = frozenset(
    ["pprint", "striptags", "title", "urlencode", "urlize", "wordcount", "wordwrap"]
)


def _filter_replace(context: Context, s: Any, old: Any, new: Any, count: Any = None) -> Any:
    count = -1 if count is None else count
    if not context.eval_ctx.autoescape:
        budget.check_replace(str(s), str(old), str(new), count, "the 'replace' filter")
        return s
    # converted as jinja2.filters.do_replace does
    markup = hasattr(old, "__html__") or (hasattr(new, "__html__") and not hasattr(s, "__html__"))
    text = escape(s) if markup else soft_str(s)
    budget.check_replace(text, soft_str(old), soft_str(new), count, "the 'replace' filter")
    return s


def _filter_join(context: Context, value: Any, d: Any = "", attribute: Any = None) -> Any:
    items = list(value)
    picked = items
    if attribute is not None:
        picked = list(map(make_attrgetter(context.environment, attribute), items))
    budget.check_join(soft_str(d), picked, "the 'join' filter")
    return items


def _filter_indent(context: Context, s: Any, width: Any = 4, *args: Any, **kwargs: Any) -> Any:
    width = kwargs.get("width", width)
    prefix = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    text = soft_str(s)
    budget.refuse_over(len(text) + budget.line_count(text) * prefix, "the 'indent' filter")
    return s


def _filter_wordwrap(context: Context, s: Any, width: Any = 79, *args: Any, **kwargs: Any) -> Any:
    width = kwargs.get("width", width)
    wrap = kwargs.get("wrapstring", args[1] if len(args) > 1 else None)
    text = soft_str(s)
    breaks = len(text) // max(width if isinstance(width, int) else 1, 1) + budget.line_count(text)
    budget.refuse_over(
        len(text) + breaks * (len(wrap) if isinstance(wrap, str) else 2), "the 'wordwrap' filter"
    )
    return s


def _filter_urlize(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
    text = soft_str(value)
    extra = sum(len(a) for a in (*args, *kwargs.values()) if isinstance(a, str))
    links = text.count(".") + text.count(":") + text.count("@") + 1  # a link has one of these
    budget.refuse_over(3 * len(text) + links * (extra + 64), "the 'urlize' filter")
    return value


def _filter_format(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
    budget.check_percent(soft_str(value), kwargs or args, "the 'format' filter")
    return value


def _filter_sum(context: Context, value: Any, attribute: Any = None, start: Any = 0) -> Any:
    items = list(value)
    if isinstance(start, str | bytes | list | tuple):
        # sum() copies what it has so far at every item: quadratic in the result
        size = len(start) + sum(weight(item) for item in items)
        budget.refuse_over(size, "the 'sum' filter", MAX_ITEMS, "items")
        budget.refuse_over(size * len(items), "the 'sum' filter", MAX_BUILT_CHARS, "items copied")
    return items


_FILTER_CHECKS: dict[str, Callable[..., Any]] = {
    "replace": _filter_replace,
    "join": _filter_join,
    "indent": _filter_indent,
    "wordwrap": _filter_wordwrap,
    "urlize": _filter_urlize,
    "format": _filter_format,
    "sum": _filter_sum,
}


def _budgeted_filter(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    """``original`` inside the budget. Marked ``pass_context`` whatever the original takes,
    which also keeps Jinja from running it at compile time (outside any budget) on
    constant arguments."""
    passes = getattr(getattr(original, "jinja_pass_arg", None), "name", None)
    call: Callable[..., Any] = {
        "context": lambda context, *a, **k: original(context, *a, **k),
        "eval_context": lambda context, *a, **k: original(context.eval_ctx, *a, **k),
        "environment": lambda context, *a, **k: original(context.environment, *a, **k),
    }.get(passes or "", lambda context, *a, **k: original(*a, **k))
    what = f"the '{name}' filter"
    check = _FILTER_CHECKS.get(name)
    weigh, widths, slow = name not in _STRUCTURAL, name in _WIDTHS, name in _SLOW_TEXT
    iterating, picks = name in _ITERATING, name in _PICKS

    def budgeted(context: Context, value: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget.tick()
        if weigh:
            for arg in (value, *args, *kwargs.values()):
                weighed(arg, what)
        if widths:
            for arg in (*args, *kwargs.values()):
                budget.check_width(arg, what)
        if slow and weight(value) > MAX_TEXT_FILTER_CHARS:
            raise TemplateBudgetError(f"{what} takes at most {MAX_TEXT_FILTER_CHARS} characters")
        if iterating:
            value = budget.counted_input(value)
        elif hasattr(value, "__next__"):
            value = counted(value)
        if check is not None:
            value = check(context, value, *args, **kwargs)
        result = call(context, value, *args, **kwargs)
        return built(result, what, new=not picks and result is not value)

    def picking(context: Context, value: Any, /, *args: Any, **kwargs: Any) -> Any:
        """The same for a filter that returns (part of) what it is given: nothing to check
        but the clock. ``default`` is in most templates, so it is worth a short path."""
        budget.tick()
        if hasattr(value, "__next__"):
            value = counted(value)
        return call(context, value, *args, **kwargs)

    chosen = picking if picks and not (weigh or widths or slow or iterating or check) else budgeted
    chosen.__name__ = name
    return pass_context(chosen)


def _compared_test(original: Callable[..., bool]) -> Callable[..., bool]:
    """A comparing test (``==``, ``in``, ...), its operands weighed first."""

    @functools.wraps(original)
    def test(*args: Any) -> bool:
        budget.tick()
        for arg in args:
            compared(arg)
        return original(*args)

    return test


_COMPARING_TESTS = [
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "equalto",
    "lessthan",
    "greaterthan",
    "in",
]


# --- the environment ---------------------------------------------------------------------------


class BudgetedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with every operation that can grow a value checked first."""

    intercepted_binops = frozenset({"**", "*", "%", "+"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget.tick()
        if operator == "**":
            budget.check_power(left, right)
        elif operator == "*":
            budget.check_repeat(left, right)
        elif operator == "+":
            budget.check_add(left, right)
        elif operator == "%" and isinstance(left, str):
            budget.check_percent(left, right, "'%'")
        return built(super().call_binop(context, operator, left, right), f"'{operator}'")

    def wrap_str_format(self, value: Any) -> Any:
        """``str.format`` and ``format_map``: small literal widths, and a result within the
        value limit."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt: str = value.__self__
        if budget.FORMAT_SPEC.search(fmt):
            raise TemplateBudgetError("format widths must be small literal numbers in templates")
        is_map = value.__name__ == "format_map"

        def bounded(*args: Any, **kwargs: Any) -> Any:
            budget.tick()
            mapping = args[0] if is_map and args else None
            values = mapping.values() if isinstance(mapping, dict) else (*args, *kwargs.values())
            budget.check_str_format(fmt, values, "format()")
            return built(wrapped(*args, **kwargs), "format()")

        return functools.update_wrapper(bounded, wrapped)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        if obj is compared:  # the most frequent call by far: the operands of comparisons
            return compared(*args)
        budget.tick()
        owner = getattr(obj, "__self__", None)
        name = getattr(obj, "__name__", None) or "a function"
        if isinstance(owner, str | bytes):
            check = budget.METHOD_CHECKS.get(name)
            if check is not None:
                args, kwargs = check(owner, args, kwargs)
        elif isinstance(owner, list | tuple) and name in ("index", "count"):
            compared(owner)
        elif owner is dict and name == "fromkeys" and args:
            args = (list(budget.counted_input(args[0])), *args[1:])
        elif isinstance(owner, LoopContext) and name == "changed":
            for arg in args:
                compared(arg)
        elif isinstance(obj, LoopContext) and args:  # loop(children) in a recursive loop
            args = (counted(args[0]), *args[1:])
        result = super().call(context, obj, *args, **kwargs)
        # new text: a string method's, a macro's or caller's output, a '~' or format();
        # anything else may be a value that already existed (dict.get, loop.cycle, ...)
        new = isinstance(owner, str | bytes) or isinstance(obj, Macro) or obj is concat
        return built(result, f"calling {name}", new=new and result is not owner)


def environment(*, autoescape: bool, undefined: type[Any], plain: bool = False) -> BudgetedSandbox:
    """A sandbox whose templates (compiled with ``instrument``) render within a ``Budget``.

    ``plain``: for parts that only print bounded recipient data through ``default`` at most
    (``mta.render._plain``): printed values are not weighed and filters not wrapped, since
    such a part has nothing to spend a budget on."""
    env = BudgetedSandbox(
        undefined=undefined,
        autoescape=autoescape,
        keep_trailing_newline=True,
        finalize=None if plain else finalize,
    )
    if plain:
        return env
    env.globals["range"] = budget.bounded_range
    env.globals["lipsum"] = budget.bounded_lipsum
    env.globals[LOOP] = counted
    env.globals[CONCAT] = concat
    env.globals[COMPARED] = compared
    for name, original in list(env.filters.items()):
        env.filters[name] = _budgeted_filter(name, original)
    for name in _COMPARING_TESTS:
        if name in env.tests:
            env.tests[name] = _compared_test(cast("Callable[..., bool]", env.tests[name]))
    return env


# --- compiling ----------------------------------------------------------------------------------


class _Instrument(NodeTransformer):
    """Routes a parsed template's loops, ``~`` and comparisons through the budget."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        static = 0
        for statement in node.body:
            for found in statement.find_all((nodes.TemplateData, nodes.Const)):
                text = getattr(found, "data", None) or getattr(found, "value", None)
                static += len(text) if isinstance(text, str) else 0
        node.iter = _call(LOOP, [cast(nodes.Expr, node.iter), nodes.Const(static)], node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _call(CONCAT, node.nodes, node.lineno)

    def visit_Compare(self, node: nodes.Compare) -> nodes.Node:
        self.generic_visit(node)
        node.expr = _compared(node.expr)
        for operand in node.ops:
            operand.expr = _compared(operand.expr)
        return node


def _call(name: str, args: list[nodes.Expr], lineno: int) -> nodes.Call:
    return nodes.Call(nodes.Name(name, "load"), args, [], None, None, lineno=lineno)


def _compared(expr: nodes.Expr) -> nodes.Expr:
    return expr if isinstance(expr, nodes.Const) else _call(COMPARED, [expr], expr.lineno)


def instrument(tree: nodes.Template) -> None:
    """Route the template's loops, concatenations and comparisons through the budget."""
    _Instrument().visit(tree)


def internal_name(tree: nodes.Template) -> nodes.Name | None:
    """A name the template must not use: the helpers ``instrument`` calls."""
    for name in tree.find_all(nodes.Name):
        if name.name.startswith("_sluice"):
            return name
    return None
