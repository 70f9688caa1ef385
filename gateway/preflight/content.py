"""Content checks (``content.*``, with ``--message FILE.json``): the body as
``POST /v1/messages`` would take it, rendered for each sample recipient.

It would be accepted; every template variable resolves; there is a text part; every image
has alt text; the HTML stays under Gmail's 102 KB clipping limit; which domains the links
point to; and the From address is under the sending domain. The request is parsed, the
templates rendered and the links found by the same code the API and the workers use.
"""

from __future__ import annotations

import re
from typing import Any

from core.errors import ValidationError
from gateway.preflight.model import Check, org_domain
from gateway.schemas import parse_send_request
from mta.render import RenderError, TemplateError, Templates
from tracking.links import rewrite_links

_IMG = re.compile(r"<img\b(?:[^>\"']|\"[^\"]*\"|'[^']*')*>", re.IGNORECASE)
_ALT = re.compile(r"\salt\s*=", re.IGNORECASE)
GMAIL_CLIP_BYTES = 102 * 1024
# Personalization that did not happen: template syntax left in the output (a typo such as
# ``{ {first_name}}`` or ``{{first_name}`` renders as text; CSS braces do not count), or another tool's merge tags
# pasted in (Mailchimp ``*|FNAME|*``, Salesforce/Braze ``%%name%%``, ``[[name]]``, ``${name}``).
_MERGE_TAG = re.compile(
    r"\{\s*\{[^{}\n]{0,60}\}\s*\}?|\{%[^\n]{0,60}?%\}|\*\|[A-Za-z0-9_:]{1,40}\|\*"
    r"|%%[A-Za-z0-9_ .]{1,40}%%|\[\[[A-Za-z0-9_ .]{1,40}\]\]|\$\{[A-Za-z0-9_ .]{1,40}\}"
)


def merge_tag_check(check_id: str, leftovers: list[str]) -> Check:
    """The check of merge tags left unfilled in a rendered (or composed) message."""
    return Check(
        check_id,
        "fail" if leftovers else "pass",
        f"{len(leftovers)} merge tag(s) left unfilled"
        if leftovers
        else "no merge tag left unfilled",
        ", ".join(leftovers[:5]),
        "write personalization as {{ variable }} (Jinja2), with | default('...') where data "
        "may be missing"
        if leftovers
        else "",
    )


def merge_tags(text: str) -> list[str]:
    """Merge tags and template syntax left in rendered output, each once, in order."""
    found: list[str] = []
    for match in _MERGE_TAG.finditer(text):
        if match.group(0) not in found:
            found.append(match.group(0))
    return found


def content_checks(domain: str, body: Any) -> list[Check]:
    """The message as ``POST /v1/messages`` would take it, rendered for each sample recipient."""
    try:
        parsed = parse_send_request(body, now=0.0)
        request = parsed.content
        templates = Templates(request.subject, request.html, request.text)
    except (ValidationError, TemplateError) as exc:
        return [
            Check(
                "content.request",
                "fail",
                "the message would be refused",
                str(exc),
                "fix the field named above",
            )
        ]
    checks = [Check("content.request", "pass", f"{len(parsed.recipients)} sample recipient(s)")]
    html_sizes, unresolved, domains = [], [], set()
    leftovers: list[str] = []
    for r in parsed.recipients:
        try:
            rendered = templates.render(r.data)
        except RenderError as exc:
            unresolved.append(f"{r.email}: {exc.field}: {exc.detail}")
            continue
        output = " ".join(p for p in (rendered.subject, rendered.html, rendered.text) if p)
        leftovers += [tag for tag in merge_tags(output) if tag not in leftovers]
        if rendered.html is not None:
            html_sizes.append(len(rendered.html.encode()))
            _, urls = rewrite_links(rendered.html, lambda url: url)
            domains |= {re.sub(r"^https?://([^/:?#]+).*$", r"\1", u).lower() for u in urls}
    checks.append(
        Check(
            "content.template",
            "fail" if unresolved else "pass",
            f"{len(unresolved)} recipient(s) with unresolved variables"
            if unresolved
            else "every template variable resolves for the sample data",
            "; ".join(unresolved[:3]),
            "give the missing data or a | default(...)",
        )
    )
    checks.append(merge_tag_check("content.merge_tags", leftovers))
    checks.append(
        Check(
            "content.text_part",
            "pass" if request.text else "warn",
            "a text part is present" if request.text else "HTML only: no text part",
            "",
            "" if request.text else "add a text version (spam filters and screen readers)",
        )
    )
    images = _IMG.findall(request.html or "")
    missing_alt = [i for i in images if not _ALT.search(i)]
    checks.append(
        Check(
            "content.img_alt",
            "warn" if missing_alt else "pass",
            f"{len(missing_alt)} of {len(images)} images without alt text"
            if missing_alt
            else f"all {len(images)} images have alt text",
            missing_alt[0][:120] if missing_alt else "",
            'describe every image with alt="..." (alt="" for decoration)',
        )
    )
    biggest = max(html_sizes, default=len((request.html or "").encode()))  # else the template
    checks.append(
        Check(
            "content.html_size",
            "fail" if biggest > GMAIL_CLIP_BYTES else "pass",
            f"HTML is {biggest / 1024:.0f} KB"
            + (" (Gmail clips over 102 KB)" if biggest > GMAIL_CLIP_BYTES else ""),
            "",
            "trim the HTML under 102 KB: Gmail hides the rest and the open pixel",
        )
    )
    checks.append(
        Check(
            "content.links",
            "pass",
            f"links to {len(domains)} domain(s)",
            ", ".join(sorted(domains)),
        )
    )
    sender = request.sender.email.rpartition("@")[2]
    aligned = org_domain(sender) == org_domain(domain)
    checks.append(
        Check(
            "content.from_domain",
            "pass" if aligned else "warn",
            f"From {request.sender.email}" + ("" if aligned else f" is not under {domain}"),
            "",
            "" if aligned else f"send from an address at {domain}",
        )
    )
    return checks
