"""mta.bounces.parse_report: hand-written DSN/ARF/auto-reply messages (tests/bounce_reports.py),
garbage, and the 375-message real-world corpus of shared/corpora/bounces measured against
Sisimai (tests/bounce_corpus.py).

Run with ``-s`` to see the corpus agreement table: per MTA family, per half of a fixed split of
the files, per side of the family split (develop, holdout), in total, and the class confusion
matrix. ``python -m tests.bounce_corpus develop`` prints the figures and one side's misses.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta.bounces import LAYOUTS, Report, parse_report
from mta.bounces.parts import smtp_command
from mta.replies import Verdict
from tests import bounce_corpus
from tests.bounce_corpus import CORPUS, REASON_CLASS, UNCLASSED
from tests.bounce_reports import (
    CARRIER_UNKNOWN_USER,
    EXCHANGE_EXPIRED,
    EXCHANGE_MAILBOX_UNAVAILABLE,
    EXCHANGE_POLICY_BLOCK,
    EXCHANGE_RELAYED,
    EXIM_BLOCKLISTED,
    EXIM_DOMAIN_NOT_EXIST_AFTER_DATA,
    GATEWAY_FILTERED_500,
    GATEWAY_HAS_MOVED,
    GATEWAY_REMOTE_NAMES_ADDRESS,
    GATEWAY_SENDER_DOMAIN_500,
    GMAIL_DELAYED_QUOTA,
    GMAIL_SPAM_BLOCK,
    IMAIL_UNKNOWN_USER,
    LOCAL_MAILER_ERROR,
    NOTICE_TWO_RECIPIENTS,
    OFFICE365_MAILBOX_FULL,
    OUT_OF_OFFICE,
    PLAIN_DELIVERED,
    POSTFIX_DELIVERED,
    POSTFIX_NO_SUCH_DOMAIN,
    POSTFIX_USER_UNKNOWN,
    POSTFIX_USER_UNKNOWN_571,
    POSTFIX_VIRTUAL_ALIAS_450,
    QMAIL_HELO_REJECTED,
    QMAIL_NO_MAILBOX,
    RELAY_DNS_TRY_AGAIN,
    RELAYED_USER_UNKNOWN,
    SENDMAIL_TOO_BIG,
    SENDMAIL_USER_NOT_LOCAL,
    SES_SECURITY_REFUSAL,
    SMARTHOST_UNABLE_TO_ROUTE,
    YAHOO_ARF,
)


def _only(report: Report) -> Any:
    assert len(report.recipients) == 1, report.recipients
    return report.recipients[0]


def test_postfix_user_unknown_is_a_hard_bad_mailbox() -> None:
    report = parse_report(POSTFIX_USER_UNKNOWN)
    assert (report.kind, report.layout) == ("dsn", "rfc3464")
    assert report.reporting_mta == "mx.sluice.test"
    assert report.original_message_id == "<01HZX3J6Q0ABCDEF@sluice.test>"
    assert report.original_headers == {
        "Message-ID": "<01HZX3J6Q0ABCDEF@sluice.test>",
        "From": "Shop <news@sluice.test>",
        "To": "Nobody@Example.NET",
        "Subject": "Your June newsletter",
        "X-Sluice-Message-ID": "msg_01HZX3J6Q0ABCDEF",
    }
    rcpt = _only(report)
    assert rcpt.email == "Nobody@example.net"  # domain lowercased, local part kept
    assert (rcpt.action, rcpt.status, rcpt.smtp_code) == ("failed", "5.1.1", 550)
    assert rcpt.diagnostic == (
        "550 5.1.1 <Nobody@Example.NET>: Recipient address rejected: "
        "User unknown in virtual mailbox table"
    )
    assert rcpt.remote_mta == "mx.example.net"
    assert rcpt.command == "RCPT"
    assert rcpt.verdict == Verdict("permanent", "bad-mailbox", "5.1.1", throttle=False, hard=True)
    assert report.failed == (rcpt,)


def test_exchange_policy_block_is_not_hard() -> None:
    report = parse_report(EXCHANGE_POLICY_BLOCK)
    assert report.kind == "dsn"
    assert report.original_message_id == "<01HZX3J6Q1XYZ@sluice.test>"
    rcpt = _only(report)
    assert (rcpt.email, rcpt.action, rcpt.status, rcpt.smtp_code) == (
        "alice@contoso.example",
        "failed",
        "5.7.1",
        550,
    )
    assert rcpt.verdict == Verdict("permanent", "policy", "5.7.1", throttle=False, hard=False)


def test_gmail_over_quota_delay_is_transient() -> None:
    report = parse_report(GMAIL_DELAYED_QUOTA)
    assert report.kind == "dsn"
    assert report.original_message_id == "<01HZX3J6Q2GMAIL@sluice.test>"
    rcpt = _only(report)
    assert (rcpt.email, rcpt.action, rcpt.status, rcpt.smtp_code) == (
        "full@gmail.com",
        "delayed",
        "4.2.2",
        452,
    )
    assert rcpt.verdict == Verdict("transient", "quota", "4.2.2", throttle=False, hard=False)
    assert report.failed == ()


def test_yahoo_arf_abuse_complaint() -> None:
    report = parse_report(YAHOO_ARF)
    assert (report.kind, report.layout, report.feedback_type) == ("arf", "arf", "abuse")
    assert report.arf_user_agent == "Yahoo!-Mail-Feedback/2.0"
    assert report.arf_version == "1"
    assert report.source_ip == "192.0.2.10"
    assert report.original_mail_from == "bounces+ghi@sluice.test"
    assert report.arrival_date == "Mon, 03 Jun 2024 10:00:00 +0000"
    assert report.original_message_id == "<01HZX3J6Q3ARF@sluice.test>"
    assert report.original_headers["X-Sluice-Message-ID"] == "msg_01HZX3J6Q3ARF"
    rcpt = _only(report)
    assert (rcpt.email, rcpt.action, rcpt.status) == ("Complainer@yahoo.com", None, None)
    assert rcpt.verdict.outcome == "delivered"  # the message arrived; then came the complaint
    assert report.failed == ()


def test_out_of_office_is_an_autoreply_without_failures() -> None:
    report = parse_report(OUT_OF_OFFICE)
    assert (report.kind, report.layout) == ("autoreply", "rfc3834")
    assert [r.email for r in report.recipients] == ["Bob@example.org"]
    assert report.failed == ()
    assert report.feedback_type is None


def test_qmail_plain_text_bounce() -> None:
    report = parse_report(QMAIL_NO_MAILBOX)
    assert (report.kind, report.layout) == ("dsn", "qmail")
    assert report.original_message_id == "<01HZX3J6Q5QMAIL@sluice.test>"
    rcpt = _only(report)
    assert (rcpt.email, rcpt.action, rcpt.status) == ("ghost@example.com", "failed", "5.1.1")
    assert rcpt.verdict.hard and rcpt.verdict.bounce_class == "bad-mailbox"


def test_exim_blocklisting_is_not_hard() -> None:
    report = parse_report(EXIM_BLOCKLISTED)
    assert (report.kind, report.layout) == ("dsn", "exim")
    assert report.original_message_id == "<01HZX3J6Q6EXIM@sluice.test>"
    rcpt = _only(report)
    assert (rcpt.email, rcpt.status, rcpt.smtp_code, rcpt.command) == (
        "kunde@example.de",
        "5.7.1",
        550,
        "RCPT",
    )
    assert rcpt.verdict == Verdict("permanent", "policy", "5.7.1", throttle=False, hard=False)


def test_user_unknown_after_data_is_a_filter_not_a_dead_address() -> None:
    raw = POSTFIX_USER_UNKNOWN.replace(b"RCPT TO command", b"end of DATA command").replace(
        b"Recipient address\r\n    rejected: User unknown in virtual mailbox table", b"User unknown"
    )
    filtered = raw.replace(b"5.1.1", b"5.0.0")
    rcpt = _only(parse_report(filtered))
    assert rcpt.command == "DOT"
    assert (rcpt.verdict.bounce_class, rcpt.verdict.hard) == ("bad-mailbox", False)
    # with the server's own x.1.1 classification it is about the address, whatever the step
    rcpt = _only(parse_report(raw))
    assert (rcpt.command, rcpt.status) == ("DOT", "5.1.1")
    assert (rcpt.verdict.bounce_class, rcpt.verdict.hard) == ("bad-mailbox", True)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe garbage",
        b"Subject: hello\r\n\r\nJust a normal message.",
        b"Content-Type: multipart/report; boundary=x\r\n\r\n--x\r\nContent-Type: message/"
        b"delivery-status\r\n\r\nFinal-Recipient: rfc822; <>\r\n--x",
        b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n--\r\n",
        b"From: x\r\n" * 10000,
    ],
)
def test_garbage_is_unknown(raw: bytes) -> None:
    report = parse_report(raw)
    assert report.kind == "unknown"
    assert report.recipients == ()


def test_non_bytes_input_is_unknown() -> None:
    assert parse_report("not bytes").kind == "unknown"  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_never_raises_on_random_bytes(raw: bytes) -> None:
    assert isinstance(parse_report(raw), Report)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([POSTFIX_USER_UNKNOWN, EXCHANGE_POLICY_BLOCK, YAHOO_ARF, EXIM_BLOCKLISTED]),
    st.integers(0, 4000),
    st.binary(max_size=40),
)
def test_never_raises_on_damaged_reports(raw: bytes, cut: int, junk: bytes) -> None:
    assert isinstance(parse_report(raw[:cut] + junk + raw[cut:]), Report)


def test_layout_registry_is_ordered_and_named() -> None:
    names = [name for name, _ in LAYOUTS]
    assert names[:2] == ["arf", "rfc3464"]
    assert names[-1] == "text"  # the generic reading comes last
    assert len(set(names)) == len(names)


@pytest.mark.parametrize(
    ("raw", "email", "kind", "status", "bounce_class", "hard"),
    [
        (POSTFIX_USER_UNKNOWN, "Nobody@example.net", "dsn", "5.1.1", "bad-mailbox", True),
        (
            POSTFIX_NO_SUCH_DOMAIN,
            "someone@no-such-domain.example",
            "dsn",
            "5.4.4",
            "bad-domain",
            True,
        ),
        (OFFICE365_MAILBOX_FULL, "carol@contoso.example", "dsn", "5.2.2", "quota", False),
        (EXCHANGE_POLICY_BLOCK, "alice@contoso.example", "dsn", "5.7.1", "policy", False),
        (GMAIL_SPAM_BLOCK, "dave@example.net", "dsn", "5.7.1", "spam", False),
        (SENDMAIL_TOO_BIG, "erin@example.org", "dsn", "5.3.4", "content", False),
        (EXCHANGE_EXPIRED, "frank@example.com", "dsn", "4.4.7", "routing", False),
        (LOCAL_MAILER_ERROR, "support@example.net", "dsn", "5.3.0", "other", False),
        (RELAYED_USER_UNKNOWN, "henry@example.jp", "dsn", "5.0.0", "bad-mailbox", False),
        (POSTFIX_DELIVERED, "grace@example.org", "delivered", "2.0.0", None, False),
    ],
    ids=lambda value: value if isinstance(value, str) and "@" not in value else None,
)
def test_each_bounce_class(
    raw: bytes, email: str, kind: str, status: str, bounce_class: str | None, hard: bool
) -> None:
    report = parse_report(raw)
    rcpt = _only(report)
    assert (report.kind, rcpt.email, rcpt.status) == (kind, email, status)
    assert (rcpt.verdict.bounce_class, rcpt.verdict.hard) == (bounce_class, hard)


def test_a_relayed_user_unknown_is_hard_only_with_proof() -> None:
    """A bare "550 user unknown" in a report may be a filter's; RCPT TO or x.1.1 proves it."""
    assert not _only(parse_report(RELAYED_USER_UNKNOWN)).verdict.hard
    at_rcpt = RELAYED_USER_UNKNOWN.replace(
        b"550 user unknown", b"550 user unknown (in reply to RCPT TO command)"
    )
    assert _only(parse_report(at_rcpt)).verdict.hard
    coded = RELAYED_USER_UNKNOWN.replace(b"Status: 5.0.0", b"Status: 5.1.1")
    assert _only(parse_report(coded)).verdict.hard


def test_a_program_exit_status_is_not_an_smtp_code() -> None:
    rcpt = _only(parse_report(LOCAL_MAILER_ERROR))
    assert (rcpt.smtp_code, rcpt.diagnostic) == (None, "255")


def test_powermta_bounce_category_decides() -> None:
    raw = RELAYED_USER_UNKNOWN.replace(
        b"Diagnostic-Code: smtp; 550 user unknown",
        b"Diagnostic-Code: smtp; 550 user unknown\r\nX-PowerMTA-BounceCategory: bad-mailbox",
    )
    assert _only(parse_report(raw)).verdict.hard
    raw = raw.replace(b"bad-mailbox", b"spam-related")
    verdict = _only(parse_report(raw)).verdict
    assert (verdict.bounce_class, verdict.hard) == ("spam", False)


# --- verdicts that did not carry over outside the corpus -------------------------------------

# (report, kind, [(email, outcome, class, hard) per recipient]): one hand-written report per kind
# of disagreement with Sisimai seen on real bounces outside the corpus (tests/bounce_reports.py)
OUT_OF_CORPUS = [
    # a dead address read as soft
    (SENDMAIL_USER_NOT_LOCAL, "dsn", [("mia@example.org", "permanent", "bad-mailbox", True)]),
    (GATEWAY_HAS_MOVED, "dsn", [("paul@example.com", "permanent", "bad-mailbox", True)]),
    (IMAIL_UNKNOWN_USER, "dsn", [("taro.yamada@example.co.jp", "permanent", "bad-mailbox", True)]),
    (
        GATEWAY_REMOTE_NAMES_ADDRESS,
        "dsn",
        [("hanako@example.net", "permanent", "bad-mailbox", True)],
    ),
    (
        CARRIER_UNKNOWN_USER,
        "dsn",
        [("hanako-0901@mms.carrier.example", "permanent", "bad-mailbox", True)],
    ),
    (
        EXCHANGE_MAILBOX_UNAVAILABLE,
        "dsn",
        [("lena@outlook.example", "permanent", "bad-mailbox", True)],
    ),
    (POSTFIX_USER_UNKNOWN_571, "dsn", [("olga@example.net", "permanent", "bad-mailbox", True)]),
    (POSTFIX_VIRTUAL_ALIAS_450, "dsn", [("ines@example.org", "permanent", "bad-mailbox", True)]),
    (
        EXIM_DOMAIN_NOT_EXIST_AFTER_DATA,
        "dsn",
        [("jan@old-company.example", "permanent", "bad-domain", True)],
    ),
    (
        SMARTHOST_UNABLE_TO_ROUTE,
        "dsn",
        [("kai@gone-domain.example", "permanent", "bad-domain", True)],
    ),
    # a live address read as hard
    (GATEWAY_FILTERED_500, "dsn", [("yuki@isp.example.jp", "permanent", "policy", False)]),
    (GATEWAY_SENDER_DOMAIN_500, "dsn", [("rosa@example.com", "permanent", "policy", False)]),
    (SES_SECURITY_REFUSAL, "dsn", [("tom@example.ch", "permanent", "policy", False)]),
    (RELAY_DNS_TRY_AGAIN, "dsn", [("lea@example.com", "permanent", "routing", False)]),
    (QMAIL_HELO_REJECTED, "dsn", [("sam@example.net", "permanent", "policy", False)]),
    # several recipients in one report
    (
        NOTICE_TWO_RECIPIENTS,
        "dsn",
        [
            ("ana@example.org", "permanent", "bad-mailbox", True),
            ("bob@example.org", "permanent", "quota", False),
        ],
    ),
    # delivery notices
    (EXCHANGE_RELAYED, "delivered", [("dora@contoso.example", "delivered", None, False)]),
    (PLAIN_DELIVERED, "delivered", [("eva@example.net", "delivered", None, False)]),
]


@pytest.mark.parametrize(
    ("raw", "kind", "expected"),
    OUT_OF_CORPUS,
    ids=[
        "user-not-local-551",
        "has-moved",
        "imail-unknown-user",
        "gateway-remote-names-address",
        "carrier-unknown-user",
        "exchange-mailbox-unavailable-550-5.5.0",
        "user-unknown-5.7.1-at-rcpt",
        "virtual-alias-450-4.1.1-given-up",
        "domain-does-not-exist-after-end-of-data",
        "5.4.4-unable-to-route",
        "filtered-5.0.0-reply-to-domain",
        "refused-5.0.0-sender-domain",
        "ses-5.7.1-security-refusal",
        "dns-try-again",
        "our-helo-name-rejected",
        "user-unknown-and-mailbox-full-in-one-report",
        "relayed-2.6.0-without-action",
        "plain-text-delivered",
    ],
)
def test_verdicts_that_did_not_carry_over(
    raw: bytes, kind: str, expected: list[tuple[str, str, str | None, bool]]
) -> None:
    report = parse_report(raw)
    found = [
        (r.email, r.verdict.outcome, r.verdict.bounce_class, r.verdict.hard)
        for r in report.recipients
    ]
    assert (report.kind, found) == (kind, expected)


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("(in reply to RCPT TO command)", "RCPT"),
        ("(in reply to end of DATA command)", "DOT"),
        ("SMTP error from remote mail server after end of data:", "DOT"),
        ("SMTP error from remote mail server after initial connection:", "CONN"),
        (">>> DATA\n<<< 354 go ahead\n>>> .\n<<< 554 5.7.1 rejected as spam", "DOT"),
        (">>> RCPT To:<a@example.org>\n<<< 550 5.1.1 User unknown", "RCPT"),
        ("host mx.example.org[192.0.2.1] refused to talk to me: 554 5.7.1 go away", "CONN"),
        ("Connected to 192.0.2.7 but my name was rejected.", "HELO"),
        ("Connected to 192.0.2.7 but sender was rejected.", "MAIL"),
        ("192.0.2.7 failed after I sent the message.", "DOT"),
        ("550 5.1.1 User unknown", None),
    ],
)
def test_the_command_a_report_names(text: str, command: str | None) -> None:
    assert smtp_command(text) == command


# --- the real-world corpus ----------------------------------------------------------------

needs_corpus = pytest.mark.skipif(
    not (CORPUS / "expected.json").is_file(), reason=f"no bounce corpus at {CORPUS}"
)

# What issue 11 asks of every half of the corpus and of the whole: agreement with Sisimai on
# hard (all recipients), on the status code (where Sisimai has a real one) and on the class
# (where Sisimai's reason maps onto one of our classes: REASON_CLASS; the rest, UNCLASSED, are
# left out and the table says how many).
THRESHOLDS = {"found": 0.98, "hard": 0.95, "status": 0.90, "class": 0.85, "notice": 1.0}
# What the whole corpus reaches today, to catch regressions. Hard went from 97.0% to 96.0% with
# the rules for the command answered, first-hand notices and 5.7.1/551/"mailbox unavailable"
# at RCPT TO: on the four recipients lost Sisimai's verdict is its own per-layout fallback
# (docs/bounces.md lists them).
TOTAL_FLOORS = {"found": 0.99, "hard": 0.965, "status": 0.98, "class": 0.96}
# Each side of the family split (develop, holdout): what it reaches today. The holdout
# measures how the rules carry over to layouts they were not written for; it is a floor
# against regressions, not a target to fit.
SIDE_FLOORS = {"found": 0.98, "hard": 0.94, "status": 0.90, "class": 0.95, "notice": 1.0}


@pytest.fixture(scope="module")
def corpus() -> bounce_corpus.Measured:
    return bounce_corpus.measure()


@needs_corpus
def test_corpus_agreement_with_sisimai(corpus: bounce_corpus.Measured) -> None:
    print("\n" + bounce_corpus.render(corpus))
    assert corpus.total.files == 375
    assert set(corpus.halves) == {"A", "B"}
    assert set(corpus.sides) == {"develop", "holdout"}
    for name, tally in [*corpus.halves.items(), ("total", corpus.total)]:
        for what, threshold in THRESHOLDS.items():
            assert tally.ratio(what) >= threshold, (name, what, tally.misses)
    for name, tally in corpus.sides.items():
        for what, floor in SIDE_FLOORS.items():
            assert tally.ratio(what) >= floor, (name, what, tally.misses)
    for what, floor in TOTAL_FLOORS.items():
        assert corpus.total.ratio(what) >= floor, (what, corpus.total.misses)


@needs_corpus
def test_the_family_split_keeps_each_vendor_on_one_side() -> None:
    """A vendor's families share a side (Microsoft's several are one vendor), and
    ``SPLIT_SALT`` is the first salt from 0 that gives each side 45-55% of the recipients, as
    the module says: 212 recipients to develop, 189 to holdout."""
    expected = bounce_corpus.expected()
    sides = {bounce_corpus.family(name): bounce_corpus.side(name) for name in expected}
    assert sides["lhost-exchange2007"] == sides["lhost-office365"] == sides["lhost-postfix"]
    assert sides["lhost-postfix"] == "develop"

    def develop_share(salt: int) -> float:
        recipients: Counter[str] = Counter()
        for name, entries in expected.items():
            family = bounce_corpus.family(name)
            recipients[bounce_corpus.family_side(family, salt)] += len(entries)
        return recipients["develop"] / recipients.total()

    shares = [develop_share(salt) for salt in range(bounce_corpus.SPLIT_SALT + 1)]
    assert [0.45 <= s <= 0.55 for s in shares] == [False] * bounce_corpus.SPLIT_SALT + [True], (
        shares
    )
    recipients = Counter(
        bounce_corpus.side(name) for name, entries in expected.items() for _ in entries
    )
    assert recipients == {"develop": 212, "holdout": 189}


@needs_corpus
def test_complaints_autoreplies_and_delivery_notices(corpus: bounce_corpus.Measured) -> None:
    """Every ARF report is ``arf`` with Sisimai's feedback type, every auto-reply an
    ``autoreply``, every delivery notice ``delivered``; none of them is ever hard."""
    assert corpus.total.notice_n == 25
    assert corpus.total.notice_errors == []
    assert all(half.notice_n for half in corpus.halves.values())
    arf = sorted((CORPUS / "samples").glob("arf-*.eml"))
    assert len(arf) == 12
    for path in arf:
        assert parse_report(path.read_bytes()).kind == "arf", path.name


def test_every_sisimai_reason_is_classed_or_left_out_on_purpose() -> None:
    assert not set(REASON_CLASS) & set(UNCLASSED)
    if (CORPUS / "expected.json").is_file():
        reasons = {e["reason"] for entries in bounce_corpus.expected().values() for e in entries}
        assert reasons <= set(REASON_CLASS) | set(UNCLASSED)


@needs_corpus
@pytest.mark.parametrize(
    ("family", "found_floor", "hard_floor"),
    [  # what this parser achieves today; the misses are listed on failure
        ("lhost-postfix", 1.0, 1.0),
        ("lhost-sendmail", 1.0, 0.97),  # a pipelined RCPT TO reply under 5.7.1: Sisimai, DATA
        ("lhost-exim", 1.0, 0.96),
        ("lhost-qmail", 1.0, 1.0),
        ("lhost-gmail", 1.0, 1.0),
        ("lhost-exchange2003", 1.0, 1.0),
        ("lhost-exchange2007", 1.0, 1.0),
        ("lhost-office365", 1.0, 1.0),
        ("lhost-outlook", 1.0, 1.0),
        ("lhost-yahoo", 1.0, 0.87),  # a bare "550: User unknown" is no proof
        ("rhost-microsoft", 1.0, 1.0),
        ("rhost-apple", 1.0, 1.0),
        ("rfc3464", 1.0, 0.94),
        ("rfc3834", 1.0, 1.0),
        ("arf", 0.89, 1.0),  # two complaints name no recipient at all
    ],
)
def test_corpus_agreement_per_family(
    corpus: bounce_corpus.Measured, family: str, found_floor: float, hard_floor: float
) -> None:
    tally = corpus.families[family]
    assert tally.ratio("found") >= found_floor
    assert tally.ratio("hard") >= hard_floor, tally.misses


@needs_corpus
def test_every_corpus_sample_is_understood() -> None:
    kinds: Counter[str] = Counter()
    for path in sorted((CORPUS / "samples").glob("*.eml")):
        kinds[parse_report(path.read_bytes()).kind] += 1
    assert sum(kinds.values()) == 375
    assert kinds["unknown"] <= 3, kinds  # mailing-list managers' replies (fml)


@needs_corpus
def test_no_rule_names_a_corpus_file() -> None:
    """The rules generalise: nothing under mta/ mentions a corpus sample."""
    names = {p.name for p in (CORPUS / "samples").glob("*.eml")}
    names |= {name.removesuffix(".eml") for name in names}
    mta = Path(__file__).resolve().parents[1] / "mta"
    for source in mta.rglob("*"):
        if source.is_file() and source.suffix in (".py", ".lua", ".json", ".txt"):
            text = source.read_text(errors="replace")
            assert not [n for n in names if n in text], source
