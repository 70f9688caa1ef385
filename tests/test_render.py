"""Template rendering rules: strict on output, falsy in conditions, escaped in HTML, sandboxed."""

from __future__ import annotations

import pytest

from mta.render import RenderError, TemplateError, Templates


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
