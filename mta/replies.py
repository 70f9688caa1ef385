"""What an SMTP reply means: delivered or not, retry or not, is the address dead, slow down?

Pure logic, no I/O. ``classify(code, text, command=...)`` looks at structure first, words
second:

1. the basic reply code, which alone decides the *outcome*: 2xx delivered, 4xx transient
   (never permanent, never hard, unless the sender gave up after it: ``gave_up``), 5xx
   permanent; anything else is a transient "other";
2. the SMTP command the reply answered (``command``): a reply to the greeting (``CONN``),
   ``HELO``/``EHLO`` or ``MAIL FROM`` is about the sending side (our IP, our name, our sender),
   never about the recipient, so never hard, whatever it says ("Host not found" about our HELO
   name is not the recipient's domain); only a greeting saying the host takes no mail at all
   (RFC 7504 ``521``/``556``, a null MX) is about the destination. A reply to ``RCPT TO`` is about
   that recipient; a reply to ``DATA`` or to the message (``DOT``, the final dot) comes after
   the recipient was accepted and applies to all recipients, often from a content filter;
3. the RFC 3463 enhanced status code found in the text (``5.1.1``, ``4.7.650``...), which
   decides the *bounce class* when it is specific (``x.1.1`` bad mailbox, ``x.2.2`` quota,
   ``x.7.26`` policy...);
4. well-known phrases of the big providers and MTAs (Gmail, Microsoft, Yahoo, Apple, Postfix,
   Exim, Exchange, Mimecast, Proofpoint, Barracuda...), which decide the class when the code is
   generic (``5.0.0``, ``5.5.0``, ``5.7.1``, none) and *veto* a hard verdict when a code that
   looks like "no such user" comes with a text about blocklists, spam, quota or rate limits;
5. the basic code again as the last resort (``552`` storage, ``551``/``553`` mailbox...).

``hard`` means the **address** is dead and should not be mailed again: unknown user, unknown
or mail-less domain, closed account. Policy and reputation blocks (``x.7.x``, whatever their
text says, but for a recipient refused at ``RCPT TO`` as unknown, below), blocklistings, full mailboxes, spam and content rejections and routing trouble are
never hard: the address is fine, the message or the sender is not. A *disabled* or suspended
mailbox (``x.2.1``) is not hard either: it exists and may be enabled again (RFC 3463). A few
texts do beat an ``x.4.x`` routing code, because they prove the address dead: a domain that
does not exist ("Host or domain name not found", ``NonExistentDomain``, no MX, RFC 3463's own
"unable to route") and a recipient refused by the receiver's access map ("Recipient address
rejected: Access denied", Microsoft's directory-based edge blocking; under ``x.7.x`` it is a
refusal unless it answered ``RCPT TO``). A null MX beats ``x.7.x`` too. ``521``/``556`` (RFC
7504: the host or domain accepts no mail) are hard unless the text says policy. A name service
that failed only for now ("Host not found, try again": TRY_AGAIN, SERVFAIL) says nothing.

A "no such user" is the wording filters borrow to hide a refusal (au, docomo and many
gateways answer filtered mail "550 User unknown"), so it is hard only with proof of what it is
about: the reply answered ``RCPT TO`` (said by the session or the report, or implied by the
reply: RFC 5321 gives ``551`` and the text "Requested action not taken: mailbox unavailable"
to RCPT TO alone), an ``x.1.x`` code (the server's own classification, at any step after the
greeting), a wording only a directory or an RCPT reply uses (``_PROVES_DEAD``), or, in a report
naming the remote MTA, a reply that names the very address it refuses (``recipient``). In reply to
``DATA`` or the message the address had been accepted, so a filter is talking; in a bounce
*report* (``quoted``: another system relays the reply) without the command, it may be a
filter's too (Sisimai's "filtered"). Words that say the address *was* there and is gone
("has moved", "account closed") and a domain that does not exist are no filter's disguise:
they need no such proof. At ``RCPT TO`` such a text also beats an ``x.7.x`` code (Postfix
access maps answer "5.7.1 ... user unknown"); without the command ``x.7.x`` stays a refusal.

Adding a rule: put a ``_rule(regex, class, ...)`` line in ``_RULES`` before any broader rule
it must win over (first match wins), with a real reply in ``tests/test_replies.py``.

``throttle`` means the receiver asks the sender to slow down (``421``, ``x.4.5`` congestion,
``452 too many recipients``, Gmail ``4.7.28``, Microsoft ``4.7.650``/``S3150``, Yahoo
``TSS04``, "too many connections", "try again later"...). Greylisting is not throttling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "BOUNCE_CLASSES",
    "BounceClass",
    "Command",
    "Outcome",
    "Verdict",
    "classify",
    "find_enhanced",
]

Outcome = Literal["delivered", "transient", "permanent"]
# The step of the SMTP session a reply answered: the greeting, HELO/EHLO, MAIL FROM, RCPT TO,
# the DATA command, and the message itself (its final dot, or BDAT LAST).
Command = Literal["CONN", "HELO", "MAIL", "RCPT", "DATA", "DOT"]
_ABOUT_US: frozenset[str | None] = frozenset({"CONN", "HELO", "MAIL"})
_AFTER_RCPT: frozenset[str | None] = frozenset({"DATA", "DOT"})
BounceClass = Literal[
    "bad-mailbox", "bad-domain", "quota", "policy", "spam", "content", "routing", "other"
]
BOUNCE_CLASSES: frozenset[str] = frozenset(
    {"bad-mailbox", "bad-domain", "quota", "policy", "spam", "content", "routing", "other"}
)
_HARD_CLASSES: frozenset[str] = frozenset({"bad-mailbox", "bad-domain"})


@dataclass(frozen=True)
class Verdict:
    """The meaning of one SMTP reply.

    ``outcome``: ``delivered`` (2xx), ``transient`` (try again later) or ``permanent``.
    ``bounce_class``: why it failed; ``None`` when delivered.
    ``enhanced``: the RFC 3463 code found in the text (``"5.1.1"``), or ``None``.
    ``throttle``: the receiver asks us to slow down.
    ``hard``: the address is dead; only ever true for a permanent bad-mailbox/bad-domain.
    """

    outcome: Outcome
    bounce_class: BounceClass | None
    enhanced: str | None
    throttle: bool
    hard: bool


# --- enhanced status codes ---------------------------------------------------------------

# class.subject.detail, not part of an IP address, a version or a date: no digit or dot
# glued on either side (a trailing sentence dot is fine).
_ENHANCED = re.compile(r"(?<![\w.])([245])\.([0-7])\.(\d{1,3})(?!\w|\.\d)")


def find_enhanced(text: str, code: int | None = None) -> str | None:
    """The first RFC 3463 code in ``text``; one whose class matches ``code`` wins."""
    found = [m.group(0) for m in _ENHANCED.finditer(text)]
    if not found:
        return None
    if code is not None and 200 <= code <= 599:
        wanted = str(code)[0]
        for candidate in found:
            if candidate[0] == wanted:
                return candidate
    return found[0]


@dataclass(frozen=True)
class _Meaning:
    """A bounce class with its hardness; ``specific`` codes beat weak text, and strong text
    decides the class of a ``catch_all`` code (x.7.x policy: spam? relaying? blocklisted?)."""

    bounce_class: BounceClass
    hard: bool = False
    specific: bool = True
    catch_all: bool = False


_GENERIC_OTHER = _Meaning("other", specific=False)
_GENERIC_POLICY = _Meaning("policy", specific=False, catch_all=True)

# (subject, detail) -> meaning; (subject, None) is the default for the subject.
_CODES: dict[tuple[int, int | None], _Meaning] = {
    (0, None): _GENERIC_OTHER,
    # x.1.x addressing
    (1, 0): _Meaning("bad-mailbox", hard=True),
    (1, 1): _Meaning("bad-mailbox", hard=True),
    (1, 2): _Meaning("bad-domain", hard=True),
    (1, 3): _Meaning("bad-mailbox", hard=True),
    (1, 4): _Meaning("bad-mailbox"),
    (1, 6): _Meaning("bad-mailbox", hard=True),
    (1, 7): _Meaning("policy", catch_all=True),  # bad sender mailbox syntax
    (1, 8): _Meaning("policy", catch_all=True),  # bad sender's system address
    # Microsoft RecipientNotFound, or RFC 7505 null MX (then the text says "domain")
    (1, 10): _Meaning("bad-mailbox", hard=True, specific=False),
    (1, None): _Meaning("bad-mailbox", specific=False),
    # x.2.x mailbox
    (2, 0): _Meaning("bad-mailbox", specific=False),
    (2, 1): _Meaning("bad-mailbox", specific=False),  # disabled: exists, may come back
    (2, 2): _Meaning("quota"),
    (2, 3): _Meaning("quota"),  # message longer than this mailbox accepts: its own limit
    (2, None): _Meaning("bad-mailbox", specific=False),
    # x.3.x mail system
    (3, 0): _GENERIC_OTHER,
    (3, 1): _Meaning("other"),  # mail system full
    (3, 2): _Meaning("routing", specific=False, catch_all=True),  # not accepting messages
    (3, 4): _Meaning("content"),  # message too big for system
    (3, None): _GENERIC_OTHER,
    # x.4.x network and routing
    (4, None): _Meaning("routing", catch_all=True),
    # x.5.x protocol
    (5, 0): _GENERIC_OTHER,
    (5, 3): _Meaning("policy", catch_all=True),  # too many recipients
    (5, None): _GENERIC_OTHER,
    # x.6.x content
    (6, 0): _Meaning("content", catch_all=True),  # "other media error": spam, virus...
    (6, None): _Meaning("content"),
    # x.7.x security and policy
    (7, 0): _GENERIC_POLICY,
    (7, 1): _GENERIC_POLICY,
    (7, None): _Meaning("policy", catch_all=True),
}


def _code_meaning(enhanced: str) -> _Meaning:
    _, subject, detail = (int(part) for part in enhanced.split("."))
    return _CODES.get((subject, detail)) or _CODES.get((subject, None)) or _GENERIC_OTHER


_THROTTLE_CODES = re.compile(r"^(?:\d\.4\.5|\d\.7\.28|4\.7\.650|4\.7\.500|4\.5\.3)$")


# --- text -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    """A phrase and what it means. ``strong`` phrases veto a hard code."""

    pattern: re.Pattern[str]
    meaning: _Meaning
    strong: bool = False
    throttle: bool = False
    beats_routing: bool = False  # the text proves the address dead despite an x.4.x code
    beats_policy: bool = False  # ... and despite an x.7.x code
    borrowed: bool = False  # a "no such user" wording filters borrow: hard only with proof
    gone: bool = False  # the address or domain does not exist: beats x.7.x at RCPT TO


def _rule(
    regex: str,
    bounce_class: BounceClass,
    *,
    hard: bool = False,
    strong: bool = False,
    throttle: bool = False,
    beats_routing: bool = False,
    beats_policy: bool = False,
    borrowed: bool = False,
    gone: bool = False,
) -> _Rule:
    return _Rule(
        re.compile(regex, re.IGNORECASE),
        _Meaning(bounce_class, hard=hard, specific=False),
        strong=strong,
        throttle=throttle,
        beats_routing=beats_routing or beats_policy,
        beats_policy=beats_policy,
        borrowed=borrowed,
        gone=gone or borrowed,
    )


# First match wins; the order matters (a "Sender address rejected: Domain not found" is
# about the sender, a "550 5.1.1 ... blocked using Spamhaus" is a blocklisting).
_RULES: tuple[_Rule, ...] = (
    _rule(r"grey[- ]?list|gray[- ]?list", "policy", strong=True),
    _rule(
        r"unusual rate of unsolicited|mail flood|4\.7\.28|rate of spam|spam rate",
        "spam",
        strong=True,
        throttle=True,
    ),
    _rule(
        r"too many (?:connections|concurrent|sessions|messages|mails|recipients|rcpt|errors"
        r"|invalid|simultaneous|smtp)|rate[- ]?limit|unusual rate|rate of (?:mail|messages)"
        r"|exceeded (?:the )?(?:\w+ )?(?:rate|connection|sending)|message (?:rate|limit)|messages? per"
        r"|sending (?:quota|limit|rate)|(?:daily|hourly) (?:user )?(?:sending )?(?:quota|limit)"
        r"|try (?:again )?later|temporarily (?:deferred|rate)|\bTSS0\d|\[TS0\d\]|S3150|4\.7\.650"
        r"|too fast|slow down|throttl|receiving mail at a rate|server busy|\btoo much mail"
        r"|unexpected volume|connection limit|excessive (?:volume|number)",
        "policy",
        strong=True,
        throttle=True,
    ),
    _rule(
        r"\bDMARC\b|\bSPF\b|\bDKIM\b|unauthenticated|not authenticated|authentication"
        r"|anti-?spoof|spoof|forged|5\.7\.26|5\.7\.509",
        "policy",
        strong=True,
    ),
    _rule(  # a link of the message is on a URI blocklist: the content, not the sender
        r"blacklisted (?:url|link)|blocklisted (?:url|link)|\buribl\b|\bsurbl\b",
        "spam",
        strong=True,
    ),
    _rule(
        r"spamhaus|barracuda|spamcop|\bsorbs\b|\bRBL\b|DNSBL|\bBRBL\b|blocked using|black ?list"
        r"|block ?list|blocked by|(?<!not )listed (?:in|on|at|by)|is listed|\[BL\d+\]|reputation"
        r"|\bbanned\b|open relay|ipcheck\.proofpoint|dnsbl-lookup|\bCS0\d\b|\bHM0\d\b|\bRP-00\d"
        r"|access denied, (?:banned|bad|traffic)|client host .{0,80}blocked|blocked - see"
        r"|\bblocked\b.{0,30}\b(?:ip|host|sender|address|domain)\b|\bip\b.{0,40}\bblocked",
        "policy",
        strong=True,
    ),
    _rule(
        r"\bspam\b|\bUCE\b|\bUBE\b|unsolicited|junk ?mail|bulk (?:e-?)?mail|scored too high"
        r"|spam score|likely spam|suspicious|phish|\bOFR_?506\b",  # Orange: "Mail rejete" as spam
        "spam",
        strong=True,
    ),
    _rule(
        r"virus|malware|infected|trojan|message content rejected|content rejected"
        r"|content (?:filter|polic)|(?:prohibited|blocked|banned|forbidden) (?:attachment|file)"
        r"|attachment (?:type|not allowed|blocked|rejected)|executable"
        r"|security issue|message (?:is )?malformed|header error|line too long|media error"
        r"|line (?:length )?limit exceeded",
        "content",
        strong=True,
    ),
    _rule(  # a filter says so: whatever else the reply says, it is the filter's verdict
        r"\bfiltered\b|(?:recipient'?s?|personal|mail|header|body|incoming) filter"
        r"|filter(?:ing)? (?:rules?|settings?|polic)|\bheader checks?\b",
        "policy",
        strong=True,
    ),
    _rule(
        r"over ?quota|quota (?:exceeded|exceeds|full|limit)|exceeded (?:\w+ )?quota"
        r"|(?:mailbox|inbox|mail ?box|account|folder) (?:is )?(?:\w+ )?full|full mailbox"
        r"|insufficient (?:disk|mailbox|user) (?:space|storage)|exceeded storage|storage (?:allocation|limit|quota)"
        r"|out of (?:storage|space)|QuotaExceeded"
        r"|over (?:its|the|their) (?:storage|quota)|disk quota|mailbox size limit"
        r"|mailbox (?:exceeds|has exceeded|exceeded)|mailbox is over",
        "quota",
        strong=True,
    ),
    _rule(  # a local delivery program failed: the receiving system's fault, whatever it says
        r"\bprocmail:|\bmaildrop:|mailer error|\bx-unix;",
        "other",
        strong=True,
    ),
    _rule(
        r"(?:message|mail|size) (?:\w+ )?(?:exceeds|too (?:big|large)|is too (?:big|large))"
        r"|too (?:big|large)|size limit|message size|exceeds (?:the )?(?:maximum|fixed)",
        "content",
        strong=True,
    ),
    _rule(
        r"will not accept|not accepted (?:for|due to) polic|local policy|policy reasons"
        r"|administrative prohibition|prohibited by (?:local )?polic"
        r"|(?:host|client|ip|network) (?:address |network )?not allowed"
        r"|groups\.google\.com/support",  # Google Groups: the group refuses the post
        "policy",
        strong=True,
    ),
    _rule(
        r"relay(?:ing)? (?:access )?(?:denied|not permitted|prohibited|not allowed)"
        r"|not (?:permitted|allowed) to relay|unable to relay|we do not relay|no relay",
        "policy",
        strong=True,
    ),
    _rule(
        r"reverse (?:dns|lookup)|\bPTR\b|\brDNS\b|cannot find your hostname|\bhelo\b|\behlo\b"
        r"|dynamic ip|dial-?up|residential",
        "policy",
        strong=True,
    ),
    _rule(
        r"sender (?:address |domain )?(?:rejected|denied|blocked|verify|unknown|not|does not)"
        r"|\bsender\b.{0,40}\b(?:rejected|refused|denied|invalid|not allowed)"
        r"|\b(?:sender|reply-?to)(?:'s)?\b.{0,20}\b(?:domain|address)\b.{0,20}"
        r"(?:does not|doesn't) exist|reply-?to (?:domain|address)"
        r"|\byour (?:sending |sender |mail )?domain\b.{0,30}\b(?:does not|doesn't|not|is not)\b"
        r"|mail ?from\b|valid from\b|from:? (?:header|domain)|from address|envelope (?:sender|from)"
        r"|return[- ]path|bad outbound",
        "policy",
        strong=True,
    ),
    _rule(  # disabled or suspended: the mailbox exists and may come back (RFC 3463 x.2.1)
        r"(?:account|mailbox|user|address|recipient)\b.{0,40}\b(?:disabled|deactivated"
        r"|suspended|inactive|frozen|locked)|(?:disabled|inactive|deactivated|suspended)"
        r" (?:account|mailbox|user)|is disabled|has been disabled|suspended|inactive|on hold"
        r"|frozen|\blocked\b",
        "bad-mailbox",
    ),
    _rule(
        r"(?:account|mailbox|user|address|recipient)\b.{0,40}\b(?:discontinued|closed"
        r"|terminated|deleted|no longer (?:active|available|in use|valid))"
        r"|closed (?:account|mailbox)|has moved|no longer (?:valid|exists?|here)"
        r"|user not local",  # RFC 5321 551: the user is elsewhere
        "bad-mailbox",
        hard=True,
        gone=True,
    ),
    _rule(  # the name service failed for now (h_errno TRY_AGAIN, SERVFAIL): nothing is known
        r"not found, try again|name ?server failure|\bSERVFAIL\b|lookup failed temporarily"
        r"|temporary (?:dns|lookup|name ?service|resolver) (?:failure|error)",
        "routing",
        strong=True,
    ),
    _rule(  # RFC 7504/7505: a null MX; Sendmail sends it with the sender's code 5.7.27
        r"(?:host|domain)(?: [\w.-]+)? does not accept (?:e-?)?mail\b(?! from)|\bnull ?mx\b",
        "bad-domain",
        hard=True,
        beats_policy=True,
    ),
    _rule(
        r"host (?:or domain name )?not found|domain (?:name )?not found|no such domain"
        r"|unknown domain|domain (?:does not|doesn't|not) exist|nonexistent domain"
        r"|(?<!client )(?<!your )(?:host|domain)(?: name)?(?: [\w-]+\.[\w.-]+)? (?:does not|doesn't"
        r"|did not) exist|unable to route\b"  # RFC 3463 X.4.4: no route to the domain at all
        r"|non-existent domain|NonExistentDomain|NXDOMAIN|unrouteable|unroutable"
        r"|no (?:valid )?mx|null mx|bad destination system|(?:domain|host) (?:is )?invalid"
        r"|invalid domain|domain .{0,60}(?:is not|isn't) (?:valid|configured|hosted)"
        r"|(?:host|domain|server|system) does not accept mail|does not accept e-?mail"
        r"|domain (?:is )?not (?:valid|in use)|host [\w.-]+ not found|host unknown"
        r"|couldn't find (?:a mail exchanger|any host)|no smtp service|domain is not reachable",
        "bad-domain",
        hard=True,
        beats_routing=True,
        gone=True,
    ),
    _rule(  # Microsoft's directory-based edge blocking (5.4.1), a recipient access map at RCPT
        r"recipient address rejected: access denied",  # TO; quoted under x.7.x, a refusal
        "bad-mailbox",
        hard=True,
        beats_routing=True,
        gone=True,
    ),
    _rule(  # refused at RCPT TO with no reason at all (no Postfix wording: it always says why)
        r"recipient address rejected\.?\s*(?:$|\(in reply to rcpt)",
        "bad-mailbox",
        hard=True,
    ),
    _rule(  # au (KDDI): its spam filter answers "550 : User unknown", naming no address
        r"(?:^|\b[45]\d\d\s)\s*:\s*user unknown",
        "bad-mailbox",
    ),
    _rule(
        r"user(?:name)? unknown|unknown (?:user|recipient|local|mailbox|address|alias)"
        r"|recipient (?:unknown|not found|invalid|does not exist)|no such (?:user|mailbox"
        r"|recipient|account|address|person|local)|(?:mailbox|user|account|address|recipient"
        r"|e-?mail|alias)\b.{0,50}\b(?:does not|doesn't|do not|did not|not) exist"
        r"|(?<!may )(?<!might )not exist|存在しません|見つかりません|リストにありません"
        r"|(?:mailbox|user|recipient|account|address) (?:is )?(?:not found|unavailable|invalid"
        r"|unknown)|(?:invalid|bad|unknown|illegal) (?:recipient|mailbox|user|address|account)"
        r"|not a valid (?:mailbox|user|recipient|address)|RecipNotFound|RecipientNotFound"
        r"|no mailbox|no (?:such )?account|doesn't have an? .{0,30}account|\bdd This user"
        r"|not our customer|addressee unknown"
        r"|not listed in|unknown or illegal"
        r"|no valid recipients|not a known user|undeliverable address"
        r"|recipient name is not recognized|name is not recognized"
        r"|mailbox not available|mailbox unavailable|account (?:unavailable|not available)",
        "bad-mailbox",
        hard=True,
        borrowed=True,
    ),
    _rule(r"access denied", "policy", strong=True),
    _rule(
        r"timed? ?out|connection (?:refused|reset|closed|dropped|lost)|network|unreachable"
        r"|no route|routing|loop|hop count|retry time|expired|too long in queue"
        r"|could not (?:connect|be delivered within)|unable to connect|lost connection"
        r"|temporary (?:failure|problem|error)|dns|requests to connect|not reachable"
        r"|could not deliver for|delivery failed \d+ attempts",
        "routing",
    ),
    _rule(
        r"polic|prohibit|not allowed|not permitted|denied|refused|rejected|blocked|block"
        r"|not accepted|not authori[sz]ed|restricted|administrative|forbidden|will not accept"
        r"|permission to post|not (?:a )?member",
        "policy",
    ),
)

_ADDRESS = re.compile(r"(?<![^\s<>()\[\]\"',;:])[^\s<>()\[\]\"',;:@]+@[^\s<>()\[\]\"',;:]+")
_NO_ADDRESS = "<@>"  # what an address becomes before matching: no word a rule could match

# A "no such user" is proof that the address is dead only in reply to RCPT TO, or with an
# x.1.x code, or in one of these wordings. In reply to DATA it comes from a filter (the
# address was accepted at RCPT TO); quoted in a report without the command it answered, it
# may be a filter's too (Sisimai's "filtered"). Either way it is not hard without proof.
# These are wordings only a directory, a mailbox store or an RCPT TO reply uses:
_PROVES_DEAD = re.compile(
    r"recipient address rejected"  # Postfix: an RCPT reply, read after DATA when pipelining
    r"|\bdd This user doesn't have"  # Yahoo checks its recipients at the end of DATA
    r"|recipient name is not recognized"  # Exchange: its own directory
    r"|not listed in (?:the )?(?:Domino Directory|public Name & Address Book)"  # Domino, Notes
    r"|ディレクトリ(?:には見つかりません|のリストにありません)"  # the same, in Japanese
    r"|mail\.local: unknown user"  # Sendmail's local delivery agent: the mailbox store itself
    r"|no valid recipients",
    re.IGNORECASE,
)
# RFC 5321 4.2.2, 4.3.2: 551 answers RCPT TO only, and this is its text for 550 at RCPT TO
_RCPT_TEXT = re.compile(r"requested action not taken:? mailbox unavailable", re.IGNORECASE)
_REFUSES_US = _Meaning("policy", specific=False)
# RFC 5321 3.1 "554 No SMTP service here", RFC 7504/7505: a host or domain that takes no mail
_TAKES_NO_MAIL = re.compile(
    r"no smtp service|does not accept (?:e-?)?mail\b(?! from)|not accepting (?:e-?)?mail\b(?! from)"
    r"|\bnull ?mx\b",
    re.IGNORECASE,
)
_MAX_TEXT = 4096  # an SMTP reply is a few lines; a longer text is truncated before matching
_THROTTLE_EXEMPT = re.compile(r"grey[- ]?list|gray[- ]?list", re.IGNORECASE)


def _text_rule(text: str) -> _Rule | None:
    for rule in _RULES:
        if rule.pattern.search(text):
            return rule
    return None


def _basic_meaning(code: int) -> _Meaning:
    if code in (521, 556):  # RFC 7504: the host or domain does not accept mail at all
        return _Meaning("bad-domain", hard=True, specific=False)
    if code == 552:
        return _Meaning("quota", specific=False)
    if code in (551, 553):
        return _Meaning("bad-mailbox", specific=False)
    return _GENERIC_OTHER


# Under x.7.x at RCPT TO, words that make a "does not exist" about us or a policy, not the
# recipient: "Your domain does not exist", "mailbox unavailable. Reject due to policy"
_NOT_THE_RECIPIENT = re.compile(
    r"\b(?:your|sender|sending|client|polic(?:y|ies)|due to)\b", re.IGNORECASE
)


def _meaning(
    code: int, enhanced: str | None, rule: _Rule | None, command: str | None, reply: str
) -> _Meaning:
    if (
        code in (521, 556)
        and (enhanced is None or enhanced[2] != "7")
        and (rule is None or rule.meaning.bounce_class in ("bad-domain", "bad-mailbox", "routing"))
    ):
        return _basic_meaning(code)  # RFC 7504: this host or domain takes no mail at all
    by_code = _code_meaning(enhanced) if enhanced is not None else None
    if by_code is not None and by_code.specific:
        if rule is None:
            return by_code
        text = rule.meaning
        if by_code.hard and rule.strong and text.bounce_class != by_code.bounce_class:
            return text  # a "no such user" code with a blocklist, quota, rate... text
        if (
            rule.strong
            and by_code.catch_all
            and text.bounce_class != by_code.bounce_class
            and not (rule.throttle and by_code.bounce_class == "routing")
        ):
            return text  # x.7.x / x.4.x / x.6.0 are catch-alls; the text says which: spam...
        if (by_code.bounce_class == "routing" and rule.beats_routing) or (
            by_code.bounce_class == "policy" and rule.beats_policy
        ):
            return text  # 5.4.4 "Host not found", Microsoft 5.4.1 "Access denied" (DBEB)
        return by_code
    if rule is not None:
        if (
            enhanced is not None
            and enhanced[2] == "7"
            and rule.meaning.hard
            and not rule.beats_policy
            and not (command == "RCPT" and rule.gone and not _NOT_THE_RECIPIENT.search(reply))
        ):
            # x.7.x is a refusal: not hard, whatever the text, except at RCPT TO a text that
            # only says the address or domain does not exist (access maps answer 5.7.1), and
            # says nothing of the sender or of a policy
            return by_code or _GENERIC_POLICY
        return rule.meaning
    if by_code is not None and by_code is not _GENERIC_OTHER:
        return by_code
    return _basic_meaning(code)


def _implied_command(code: int, text: str, enhanced: str | None) -> str | None:
    """The command a reply can only have answered, when nobody said (RFC 5321 4.3.2)."""
    if code == 551:
        return "RCPT"
    if code == 550 and (enhanced is None or enhanced[2] != "7") and _RCPT_TEXT.search(text):
        return "RCPT"
    return None


def _about_us(meaning: _Meaning, code: int, text: str, command: str | None) -> _Meaning:
    """A reply to the greeting, HELO or MAIL FROM is about our IP, name or sender: a refusal,
    never a dead recipient; except a greeting saying the host takes no mail (RFC 7504)."""
    if meaning.bounce_class not in _HARD_CLASSES:
        return meaning
    takes_no_mail = (
        command == "CONN"
        and meaning.bounce_class == "bad-domain"
        and (code in (521, 556) or _TAKES_NO_MAIL.search(text) is not None)
    )
    return meaning if takes_no_mail else _REFUSES_US


def _proven(
    text: str, enhanced: str | None, command: str | None, quoted: bool, recipient: str | None
) -> bool:
    """Whether a borrowed "no such user" wording is about the address (see _PROVES_DEAD)."""
    if command == "RCPT" or _PROVES_DEAD.search(text):
        return True
    if recipient and command not in _AFTER_RCPT and recipient.lower() in text.lower():
        return True  # the server names the very address it does not know
    if enhanced is not None and enhanced[2] == "1":
        return True  # the server's own classification: bad destination mailbox
    if command in _AFTER_RCPT:
        return False
    return not quoted


def classify(
    code: int,
    text: str,
    *,
    command: Command | None = None,
    quoted: bool = False,
    gave_up: bool = False,
    recipient: str | None = None,
) -> Verdict:
    """Classify one SMTP reply (``code`` and its text, multi-line or not). Never raises.

    ``command``: the step the reply answered (``CONN``, ``HELO``, ``MAIL``, ``RCPT``,
    ``DATA``, ``DOT``), when known; Sluice's own sessions always know it.
    ``quoted``: the reply comes second-hand, in a bounce report, not from our own session.
    ``recipient``: the failed address, when the reply is a named remote MTA's (a report's
    ``Remote-MTA``): a "no such user" that names it is about it.
    ``gave_up``: the sending MTA gave up after this reply (a report's ``Action: failed``): a
    4xx is then permanent, and hard when it proves the address dead (Postfix bouncing after
    days of "450 4.1.1 ... User unknown in virtual alias table").
    """
    text = (text if isinstance(text, str) else str(text))[:_MAX_TEXT]
    enhanced = find_enhanced(text, code)
    if 200 <= code <= 299:
        return Verdict("delivered", None, enhanced, throttle=False, hard=False)
    rule = _text_rule(_ADDRESS.sub(_NO_ADDRESS, text))  # "no-such-user@" is no reason
    throttle = (
        code == 421
        or (enhanced is not None and _THROTTLE_CODES.match(enhanced) is not None)
        or (rule is not None and rule.throttle)
    ) and not _THROTTLE_EXEMPT.search(text)
    if not 400 <= code <= 599:
        return Verdict("transient", "other", enhanced, throttle=throttle, hard=False)
    answered = command or _implied_command(code, text, enhanced)
    meaning = _meaning(code, enhanced, rule, answered, text)
    if answered in _ABOUT_US:
        meaning = _about_us(meaning, code, text, answered)
    if code < 500 and not gave_up:
        return Verdict("transient", meaning.bounce_class, enhanced, throttle=throttle, hard=False)
    borrowed = rule is not None and rule.borrowed and meaning is rule.meaning  # bad-mailbox
    hard = (
        meaning.hard
        and meaning.bounce_class in _HARD_CLASSES
        and not (borrowed and not _proven(text, enhanced, answered, quoted, recipient))
    )
    return Verdict("permanent", meaning.bounce_class, enhanced, throttle=throttle, hard=hard)
