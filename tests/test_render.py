"""Template rendering rules: strict on output, falsy in conditions, escaped in HTML, sandboxed,
and, within the render budgets, exactly what Jinja's own sandbox renders."""

from __future__ import annotations

from typing import Any

import jinja2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2.sandbox import ImmutableSandboxedEnvironment

from loadtests.harness import fixture_batch
from mta.render import RenderError, RenderOverBudget, TemplateError, Templates, printer
from mta.template_budget import MAX_ITEMS, MAX_LOOP_ITERATIONS, MAX_PART_CHARS


def test_defaults_and_conditions_work_without_the_variable() -> None:
    t = Templates(
        "{{ first_name | default('Hi') }}!", "{% if coupon %}{{ coupon }}{% endif %}ok", None
    )
    out = t.render({})
    assert out.subject == "Hi!"
    assert out.html == "ok"


def test_printing_an_undefined_variable_fails_the_recipient() -> None:
    with pytest.raises(RenderError, match="first_name"):
        Templates("Hi {{ first_name }},", None, "x").render({})
    with pytest.raises(RenderError):
        Templates("s", None, "{{ user.name }}").render({"user": {}})


def test_html_escapes_values_text_does_not() -> None:
    out = Templates("s", "<p>{{ name }}</p>", "{{ name }}").render({"name": "<b>Tom & Jerry</b>"})
    assert out.html == "<p>&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;</p>"
    assert out.text == "<b>Tom & Jerry</b>"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ self._TemplateReference__context }}",
        "{% for i in range(10**9) %}x{% endfor %}",
        "{{ lipsum.__globals__['os'] }}",
    ],
)
def test_sandbox_escapes_are_refused(source: str) -> None:
    with pytest.raises((TemplateError, RenderError)):
        Templates("s", source, None).render({})


def test_subject_with_injected_line_break_is_refused() -> None:
    with pytest.raises(RenderError, match="CR, LF"):
        Templates("Hi {{ name }}", None, "x").render({"name": "x\r\nBcc: victim@example.com"})


def test_syntax_error_names_the_field() -> None:
    with pytest.raises(TemplateError) as caught:
        Templates("s", "{% if %}", None)
    assert caught.value.field == "html"


# --- the budgets change nothing an ordinary template renders -----------------------------------


class _Falsy(jinja2.StrictUndefined):
    def __bool__(self) -> bool:  # type: ignore[override]
        return False


# Jinja's own sandbox, without Sluice's budgets: the reference output.
PLAIN = {
    autoescape: ImmutableSandboxedEnvironment(
        undefined=_Falsy, autoescape=autoescape, keep_trailing_newline=True
    )
    for autoescape in (False, True)
}
DATA: dict[str, Any] = {
    "first_name": "Ada",
    "n": 7,
    "coupon": "",
    "items": [
        {"name": "Shoes <b>", "price": 89.5, "qty": 1, "tags": ["run", "trail"]},
        {"name": "Socks & co", "price": 14.0, "qty": 3, "tags": []},
        {"name": "Watch", "price": 19.0, "qty": 1, "tags": ["time"]},
    ],
    "tree": [{"name": "a", "children": [{"name": "b", "children": []}]}],
    "url": "see https://shop.example.com/x and www.example.org now",
    "text": "line one\nline two\nline three is a much longer line that needs wrapping somewhere",
}
ORDINARY = [
    "{% for i in items %}{{ loop.index }}/{{ loop.length }} {{ i.name }}{% if not loop.last %}, {% endif %}{% endfor %}",
    "{{ first_name ~ ' ' ~ n ~ ' ' ~ items[0].name }}{% for i in items %}{{ '<li>' ~ i.name ~ '</li>' }}{% endfor %}",
    "{{ (first_name|safe) ~ '<c>' }}{{ '<x>' ~ (first_name|safe) }}{{ '<b>'|e }}{{ '<i>'|safe }}{{ '<u>' }}",
    "{{ items|map(attribute='name')|join(', ') }}|{{ items|sum(attribute='price') }}|{{ items|map(attribute='price')|max }}",
    "{{ items|sort(attribute='price')|map(attribute='name')|list }} {{ items|selectattr('qty', 'gt', 1)|map(attribute='name')|first }}",
    "{% if n > 5 and 'Ada' in first_name and n == 7 and items|length >= 3 %}yes{% endif %}{% if 1 < n < 10 %}chain{% endif %}",
    "{{ '%.2f'|format(items[0].price) }} {{ '%s-%s' % (first_name, n) }} {{ '{} {}'.format(first_name, n) }} {{ '{0:>8}'.format(n) }}",
    "{{ first_name|replace('a', 'A') }} {{ first_name.replace('A', 'a') }} {{ ', '.join(['x', 'y']) }} {{ first_name.center(11, '*') }}",
    "{% macro row(i) %}<tr><td>{{ i.name }}</td><td>{{ caller() if caller else '' }}</td></tr>{% endmacro %}{% for i in items %}{{ row(i) }}{% call row(i) %}{{ i.qty }}{% endcall %}{% endfor %}",
    "{% set ns = namespace(total=0, s='') %}{% for i in items %}{% set ns.total = ns.total + i.price * i.qty %}{% set ns.s = ns.s ~ i.name %}{% endfor %}{{ ns.total }} {{ ns.s }}",
    "{% for t in tree recursive %}{{ t.name }}({{ loop.depth }}){% if t.children %}[{{ loop(t.children) }}]{% endif %}{% endfor %}",
    "{% for i in items %}{{ loop.cycle('odd', 'even') }}{% if loop.changed(i.qty) %}!{% endif %}{% endfor %}",
    "{% for g in items|groupby('qty') %}{{ g.grouper }}:{{ g.list|length }};{% endfor %}{% for row in items|batch(2, '-') %}{{ row|length }}{% endfor %}{% for col in items|slice(2) %}{{ col|length }}{% endfor %}",
    "{% for k, v in {'b': 2, 'a': 1}|dictsort %}{{ k }}={{ v }}{% endfor %}{% for k, v in {'x': 1}.items() %}{{ k }}{{ v }}{% endfor %}{{ {'x': 1}|items|list }}",
    "{{ text|wordwrap(20) }}|{{ text|indent(2) }}|{{ text|truncate(20) }}|{{ url|urlize }}|{{ 'hello world'|title }}|{{ text|wordcount }}",
    "{{ items|string }}|{{ items[0]|tojson }}|{{ items[0]|pprint }}|{{ {'class': 'x'}|xmlattr }}|{{ 'a b'|urlencode }}",
    "{% set x %}{% for i in range(3) %}{{ i }}{% endfor %}{% endset %}{{ x }}{% filter upper %}{{ first_name }} done{% endfilter %}",
    "{{ range(5)|list }} {{ range(10)|select('odd')|list }} {{ [3, 1, 2]|sort|reverse|list }} {{ [1, 1, 2]|unique|list }} {{ 'abc'|list }}",
    "{{ coupon|default('none') }} {{ missing|default('d') }} {% if coupon %}c{% else %}no{% endif %} {{ n is divisibleby 7 }} {{ 2 is in [1, 2] }}",
    "{{ [1, 2] + [3] }} {{ 'ab' * 3 }} {{ [0] * 3 }} {{ 2 ** 10 }} {{ 7 % 3 }} {{ 'x' + 'y' }} {{ n + 1 }}",
    "{% autoescape false %}{{ '<b>' ~ first_name }}{% endautoescape %}{{ '<b>' ~ first_name }}",
    "{% for c in first_name %}{{ c }}.{% endfor %}{% for i in items if i.qty > 1 %}{{ i.name }}{% else %}none{% endfor %}",
    "{{ dict(a=1)|tojson }} {{ items|map(attribute='tags')|map('join', '+')|join('|') }} {{ items|rejectattr('tags')|map(attribute='name')|join }}",
    "{{ 'a,b,c'.split(',') }} {{ ' x '.strip() }} {{ 'abc'[::-1] }} {{ items|count }} {{ (items|last).name }} {{ 'ab'.zfill(5) }} {{ 'a\\tb'.expandtabs(4) }}",
]


@pytest.mark.parametrize("source", ORDINARY)
def test_ordinary_templates_render_exactly_as_jinja_renders_them(source: str) -> None:
    out = Templates("s", source, source).render(DATA)
    assert out.html == PLAIN[True].from_string(source).render(DATA)
    assert out.text == PLAIN[False].from_string(source).render(DATA)


def test_the_fixture_renders_exactly_as_jinja_renders_it() -> None:
    body = fixture_batch(50)
    templates = Templates(body["subject"], body["html"], body["text"])
    for recipient in body["recipients"]:
        data = recipient["data"]
        out = templates.render(data)
        assert out.subject == PLAIN[False].from_string(body["subject"]).render(data).strip()
        assert out.html == PLAIN[True].from_string(body["html"]).render(data)
        assert out.text == PLAIN[False].from_string(body["text"]).render(data)


def test_a_part_stops_as_soon_as_it_passes_its_cap() -> None:
    """Each iteration would print 1 MB: the render stops at the third, not the thousandth."""
    source = '{% set s = "x" * 1000000 %}{% for i in range(1000) %}{{ s }}{% endfor %}'
    with pytest.raises(RenderOverBudget, match=f"larger than {MAX_PART_CHARS} characters"):
        Templates("s", None, source).render({})


def test_only_the_data_makes_this_template_expensive() -> None:
    templates = Templates(
        "s", None, "{% for i in range(100) %}{{ note | default('') }}{% endfor %}"
    )
    with pytest.raises(RenderOverBudget) as caught:
        templates.render({"note": "n" * 60_000})
    assert templates.expensive_without_data(caught.value.field) is None
    bomb = Templates("s", None, '{{ "x" * 1000000 ~ "x" * 1000000 ~ "x" * 1000000 }}')
    with pytest.raises(RenderOverBudget) as caught:
        bomb.render({})
    assert "'~' would build" in (bomb.expensive_without_data("text") or "")


@pytest.mark.parametrize(
    "use",
    [
        "map('string')|list",
        "select|list",
        "reject|list",
        "batch(2)|list",
        "slice(2)|list",
        "groupby(0)",
        "sum",
        "unique|list",
        "list",
        "join",
        "sort",
        "min",
        "max",
        "first",
    ],
)
def test_iterating_filters_draw_from_the_loop_budget(use: str) -> None:
    """A list of the largest size a template may build, iterated once more by a filter."""
    assert MAX_ITEMS == MAX_LOOP_ITERATIONS
    source = "{% set l = (range(1000)|list) * " + str(MAX_ITEMS // 1000) + " %}{{ l|" + use + " }}"
    if use == "first":  # picks one item: no iteration to count
        assert Templates("s", None, source).render({}).text == "0"
        return
    with pytest.raises(RenderOverBudget, match=f"loops ran more than {MAX_LOOP_ITERATIONS}"):
        Templates("s", None, source).render({})


def test_parts_that_only_print_data_render_without_a_budget() -> None:
    """The common template (the fixture) prints recipient data and nothing else: it renders
    without per-value accounting, and still within the size limit."""
    fixture = fixture_batch(1)
    plain = Templates(fixture["subject"], fixture["html"], fixture["text"])
    assert plain.plain
    sites = "".join(f"{{{{ v{i} }}}}" for i in range(33))
    assert not Templates(sites, None, None).plain, "too many places to print"
    for source in ("{{ a ~ b }}", "{% for x in xs %}{{ x }}{% endfor %}", "{{ a | upper }}"):
        assert not Templates(source, None, None).plain, source
    big = {f"v{i}": "x" * 60_000 for i in range(32)}
    wide = Templates("s", "".join(f"{{{{ v{i} }}}}" for i in range(32)), None)
    assert wide.plain
    assert len(wide.render(big).html or "") == 32 * 60_000
    bigger = {name: value + "x" * 10_000 for name, value in big.items()}
    with pytest.raises(RenderOverBudget):  # 2.2 MB of output: over the part's 2 MB
        wide.render(bigger)


# --- printing data by name without Jinja ---------------------------------------------------

_NAMES = ["first_name", "city", "range", "n", "self"]
_PIECES = st.sampled_from(
    [
        "Hi ",
        "<b>",
        "{{ first_name }}",
        "{{ city }}",
        "{{ n }}",
        '{{ first_name | default("there") }}',
        "{{ city | default('<somewhere> & co') }}",
        "{{ city | default(3) }}",
        "{{ first_name.upper }}",
        "{{ range }}",
        "{{ 'x' }}",
        "\n",
        " {{first_name|default('a', true)}}",
        "{{ self }}",
        "{{ self | default('me') }}",
    ]
)
_DATA_VALUES = (
    st.text(alphabet="ab <>&\"'é\n", max_size=8)
    | st.integers(-5, 5)
    | st.none()
    | st.booleans()
    | st.just(["x"])
)


@settings(max_examples=200, deadline=None)
@given(
    source=st.lists(_PIECES, max_size=6).map("".join),
    data=st.dictionaries(st.sampled_from(_NAMES), _DATA_VALUES, max_size=4),
    autoescape=st.booleans(),
)
def test_data_printed_by_name_is_printed_exactly_as_jinja_prints_it(
    source: str, data: dict[str, Any], autoescape: bool
) -> None:
    """A plain template printing data by name is printed without Jinja (``Printer``) when
    every value it prints is a string: exactly Jinja's output, escaped alike in HTML; any
    other case (a number, a missing name without a default, an attribute, a global, a
    constant, ``default(..., true)``) is left to Jinja (None)."""
    templates = Templates(source, source if autoescape else None, None if autoescape else source)
    part = templates.html if autoescape else templates.text
    assert part is not None
    found = printer(part)
    if found is None:
        return
    printed = found.render(data)
    try:
        expected = PLAIN[autoescape].from_string(source).render(data)
    except jinja2.UndefinedError:
        assert printed is None
        return
    if printed is not None:
        assert printed == expected
    else:
        assert any(type(data.get(name, "")) is not str for name, _ in found.sites)
    if autoescape:
        return
    if any(ch in expected for ch in "\r\n"):  # the subject's own checks, either way
        with pytest.raises(RenderError):
            templates.render_subject(data)
    else:
        assert templates.render_subject(data) == expected.strip()


def test_the_fixture_is_printed_without_jinja() -> None:
    body = fixture_batch(3)
    templates = Templates(body["subject"], body["html"], body["text"])
    for part in (templates.subject, templates.html, templates.text):
        assert part is not None and printer(part) is not None
    for recipient in body["recipients"]:
        html = printer(templates.html).render(recipient["data"])  # type: ignore[arg-type,union-attr]
        assert html == PLAIN[True].from_string(body["html"]).render(recipient["data"])
