"""mta.replies.classify: properties over any reply, and a table of real providers' replies."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta.replies import BOUNCE_CLASSES, Command, Verdict, classify, find_enhanced

# --- properties ---------------------------------------------------------------------------

texts = st.one_of(
    st.text(max_size=300),
    st.sampled_from(
        [
            "",
            "5.1.1 user unknown",
            "4.7.0 try again later",
            "5.7.1 blocked using Spamhaus",
            "4.2.2 over quota",
            "5.2.1 account disabled",
            "2.0.0 OK",
        ]
    ),
    st.builds(
        lambda cls, sub, det, tail: f"{cls}.{sub}.{det} {tail}",
        st.sampled_from("245"),
        st.integers(0, 9),
        st.integers(0, 999),
        st.text(max_size=80),
    ),
)


@settings(max_examples=300, deadline=None)
@given(code=st.integers(200, 299), text=texts)
def test_2xx_is_delivered(code: int, text: str) -> None:
    verdict = classify(code, text)
    assert verdict.outcome == "delivered"
    assert verdict.bounce_class is None
    assert not verdict.hard
    assert not verdict.throttle


@settings(max_examples=300, deadline=None)
@given(code=st.integers(400, 499), text=texts)
def test_4xx_is_transient_and_never_hard(code: int, text: str) -> None:
    verdict = classify(code, text)
    assert verdict.outcome == "transient"
    assert not verdict.hard
    assert verdict.bounce_class in BOUNCE_CLASSES


@settings(max_examples=300, deadline=None)
@given(code=st.integers(500, 599), text=texts)
def test_5xx_is_permanent(code: int, text: str) -> None:
    verdict = classify(code, text)
    assert verdict.outcome == "permanent"
    assert verdict.bounce_class in BOUNCE_CLASSES


@settings(max_examples=500, deadline=None)
@given(code=st.integers(-1000, 1000), text=texts)
def test_never_raises_and_hard_means_a_dead_address(code: int, text: str) -> None:
    verdict = classify(code, text)
    assert isinstance(verdict, Verdict)
    if verdict.hard:
        assert verdict.outcome == "permanent"
        assert verdict.bounce_class in {"bad-mailbox", "bad-domain"}
    if verdict.enhanced is not None:
        assert verdict.enhanced in text
    if not 200 <= code <= 599:
        assert (verdict.outcome, verdict.bounce_class) == ("transient", "other")


@settings(max_examples=200, deadline=None)
@given(code=st.integers(500, 599), detail=st.integers(0, 999), text=st.text(max_size=120))
def test_x7_policy_codes_are_never_hard(code: int, detail: int, text: str) -> None:
    assert not classify(code, f"5.7.{detail} {text}").hard


def test_enhanced_code_is_not_taken_from_addresses_or_ips() -> None:
    assert find_enhanced("host 10.5.1.1 said: 550 go away") is None
    assert find_enhanced("Postfix 2.11.0 <user5.1.1@example.com>") is None
    assert find_enhanced("550-5.7.26 Unauthenticated") == "5.7.26"
    assert find_enhanced("550 4.2.2 then 5.2.2 over quota", 550) == "5.2.2"
    assert find_enhanced("Sorry, no mailbox here by that name. (#5.1.1)") == "5.1.1"


# --- real replies -------------------------------------------------------------------------

# (code, text, outcome, bounce_class, hard, throttle): one reply a line, as providers send them
# fmt: off
REAL_REPLIES = [
    # Gmail / Google Workspace
    (550, "5.1.1 The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces. Learn more at https://support.google.com/mail/?p=NoSuchUser a1si123 - gsmtp", "permanent", "bad-mailbox", True, False),
    (550, "5.2.1 The email account that you tried to reach is disabled. Learn more at https://support.google.com/mail/?p=DisabledUser - gsmtp", "permanent", "bad-mailbox", False, False),  # may come back
    (452, "4.2.2 The email account that you tried to reach is over quota. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaTemp - gsmtp", "transient", "quota", False, False),
    (552, "5.2.2 The email account that you tried to reach is over quota. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaPerm - gsmtp", "permanent", "quota", False, False),
    (550, "5.7.26 This mail is unauthenticated, which poses a security risk to the sender and Gmail users, and has been blocked. The sender must authenticate with at least one of SPF or DKIM. - gsmtp", "permanent", "policy", False, False),
    (550, "5.7.26 Unauthenticated email from example.com is not accepted due to domain's DMARC policy. Please contact the administrator of example.com domain - gsmtp", "permanent", "policy", False, False),
    (421, "4.7.0 [192.0.2.1 15] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited. - gsmtp", "transient", "spam", False, True),
    (421, "4.7.28 [192.0.2.1] Our system has detected an unusual rate of unsolicited mail originating from your DKIM domain. - gsmtp", "transient", "spam", False, True),
    (550, "5.7.1 [192.0.2.1] Our system has detected that this message is likely unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been blocked. - gsmtp", "permanent", "spam", False, False),
    (552, "5.7.0 This message was blocked because its content presents a potential security issue. - gsmtp", "permanent", "content", False, False),
    (450, "4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered. - gsmtp", "transient", "policy", False, True),
    (550, "5.4.5 Daily user sending quota exceeded. - gsmtp", "permanent", "routing", False, True),
    (452, "4.5.3 Your message has too many recipients. - gsmtp", "transient", "policy", False, True),
    # Microsoft: Outlook.com, Hotmail, Office 365, Exchange
    (550, "5.5.0 Requested action not taken: mailbox unavailable (S2017062302). [BN1NAM02FT012.eop-nam02.prod.protection.outlook.com]", "permanent", "bad-mailbox", True, False),
    (550, "5.7.1 Service unavailable, Client host [192.0.2.1] blocked using Spamhaus. To request removal from this list see https://www.spamhaus.org/query/ip/192.0.2.1 (AS3130). [BN8NAM11FT030.eop-nam11.prod.protection.outlook.com]", "permanent", "policy", False, False),
    (550, "5.4.1 Recipient address rejected: Access denied. AS(201806281) [DB5EUR03FT011.eop-EUR03.prod.protection.outlook.com]", "permanent", "bad-mailbox", True, False),
    (550, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", "permanent", "bad-mailbox", True, False),
    (550, "5.1.1 RESOLVER.ADR.RecipNotFound; not found", "permanent", "bad-mailbox", True, False),
    (451, "4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation. For e-mail delivery information, see https://postmaster.live.com (S775)", "transient", "policy", False, True),
    (550, "5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150).", "permanent", "policy", False, True),
    (451, "4.7.500 Server busy. Please try again later from [192.0.2.1]. (S77714) [SN1NAM02FT055.eop-nam02.prod.protection.outlook.com]", "transient", "policy", False, True),
    (550, "5.7.606 Access denied, banned sending IP [192.0.2.1]. To request removal from this list please visit https://sender.office.com/", "permanent", "policy", False, False),
    (550, "5.7.509 Access denied, sending domain [EXAMPLE.COM] does not pass DMARC verification and has a DMARC policy of reject.", "permanent", "policy", False, False),
    (554, "5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded", "permanent", "quota", False, False),
    (554, "5.4.4 SMTPSEND.DNS.NonExistentDomain; nonexistent domain", "permanent", "bad-domain", True, False),
    (550, "5.4.316 Message expired, connection refused(Socket error code 10061)", "permanent", "routing", False, False),
    (550, "5.4.1 Relay Access Denied", "permanent", "policy", False, False),
    (550, "5.4.1 All recipient addresses rejected : Access denied [AM4PEPF00025F97.EURPRD83.prod.outlook.com]", "permanent", "policy", False, False),
    (554, "5.4.4 Unable to route due to invalid recipient address", "permanent", "bad-domain", True, False),  # X.4.4: no route at all
    (550, "5.4.6 Routing loop detected", "permanent", "routing", False, False),
    (550, "5.7.1 Message rejected as spam by Content Filtering.", "permanent", "spam", False, False),
    # Yahoo / AOL
    (554, "delivery error: dd This user doesn't have a yahoo.com account (someone@yahoo.com) [0] - mta1234.mail.gq1.yahoo.com", "permanent", "bad-mailbox", True, False),
    (554, "delivery error: dd Sorry your message to someone@yahoo.com cannot be delivered. This mailbox is disabled (554.30). - mta1234.mail.bf1.yahoo.com", "permanent", "bad-mailbox", False, False),
    (553, "5.7.1 [BL21] Connections will not be accepted from 192.0.2.1, because the ip is in Spamhaus's list; see https://postmaster.yahooinc.com/error-codes", "permanent", "policy", False, False),
    (421, "4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", "transient", "policy", False, True),
    (421, "4.7.0 [TS03] All messages from 192.0.2.1 will be permanently deferred; Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes", "transient", "policy", False, True),
    (554, "5.7.9 Message not accepted for policy reasons.  See https://postmaster.yahooinc.com/error-codes", "permanent", "policy", False, False),
    (521, "5.2.1 :  AOL will not accept delivery of this message.", "permanent", "policy", False, False),
    # Apple iCloud
    (550, "5.1.1 <someone@icloud.com>: user does not exist", "permanent", "bad-mailbox", True, False),
    (554, "5.7.1 [CS01] Message rejected due to local policy. Please visit https://support.apple.com/en-us/HT204137", "permanent", "policy", False, False),
    (552, "5.2.2 <someone@me.com>: user is over quota (in reply to RCPT TO command)", "permanent", "quota", False, False),
    (550, "5.7.0 [HM08] Message rejected due to local policy. Please visit https://support.apple.com/en-us/HT204137", "permanent", "policy", False, False),
    # Postfix
    (550, "5.1.1 <someone@example.com>: Recipient address rejected: User unknown in virtual mailbox table", "permanent", "bad-mailbox", True, False),
    (450, "4.1.1 <someone@example.com>: Recipient address rejected: User unknown in local recipient table", "transient", "bad-mailbox", False, False),
    (554, "5.7.1 <someone@example.com>: Relay access denied", "permanent", "policy", False, False),
    (450, "4.7.1 Client host rejected: cannot find your hostname, [192.0.2.1]", "transient", "policy", False, False),
    (550, "5.1.2 <someone@example.invalid>: Recipient address rejected: Domain not found", "permanent", "bad-domain", True, False),
    (450, "4.2.0 <someone@example.com>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/example.com.html, please try again later", "transient", "policy", False, False),
    (554, "5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/192.0.2.1", "permanent", "policy", False, False),
    (552, "5.3.4 Message size exceeds fixed limit", "permanent", "content", False, False),
    (550, "5.1.0 <bounce@example.com>: Sender address rejected: Domain not found", "permanent", "policy", False, False),
    # Exim
    (550, "Unrouteable address", "permanent", "bad-domain", True, False),
    (550, "No Such User Here", "permanent", "bad-mailbox", True, False),
    (550, "rejected: administrative prohibition", "permanent", "policy", False, False),
    (451, "Temporary local problem - please try later", "transient", "policy", False, True),
    (550, "Message rejected as high-probability spam", "permanent", "spam", False, False),
    # Mimecast
    (550, "Invalid Recipient - https://community.mimecast.com/docs/DOC-1369#550 [ab12CD34ef.us312]", "permanent", "bad-mailbox", True, False),
    (550, "Rejected by header based Anti-Spoofing policy: someone@example.com - https://community.mimecast.com/docs/DOC-1369#550 [abc.uk44]", "permanent", "policy", False, False),
    (554, "Email rejected due to security policies - https://community.mimecast.com/docs/DOC-1369#554", "permanent", "policy", False, False),
    (451, "Internal resource temporarily unavailable - https://community.mimecast.com/docs/DOC-1369#451", "transient", "other", False, False),
    (550, "Envelope blocked - User Entry - https://community.mimecast.com/docs/DOC-1369#550", "permanent", "policy", False, False),
    # Proofpoint
    (554, "5.7.0 Blocked - see https://ipcheck.proofpoint.com/?ip=192.0.2.1", "permanent", "policy", False, False),
    (550, "5.7.1 Recipient address rejected: Message blocked due to spam content in the message", "permanent", "spam", False, False),
    (550, "5.1.1 User Unknown", "permanent", "bad-mailbox", True, False),
    # Barracuda
    (554, "Service unavailable; Client host [192.0.2.1] blocked using Barracuda Reputation; http://www.barracudanetworks.com/reputation/?r=1&ip=192.0.2.1", "permanent", "policy", False, False),
    (550, "permanent failure for one or more recipients (someone@example.com:blocked)", "permanent", "policy", False, False),
    (421, "Too many concurrent SMTP connections; please try again later.", "transient", "policy", False, True),
    (550, "No such user (someone@example.com)", "permanent", "bad-mailbox", True, False),
    (554, "5.7.1 Message content rejected, virus detected", "permanent", "content", False, False),
    # Orange, au (KDDI), URI blocklists, null MX, Postfix access maps
    (550, "5.2.0 Mail rejete. Mail rejected. OFR_506 [506]", "permanent", "spam", False, False),
    (550, ": User unknown", "permanent", "bad-mailbox", False, False),  # au's filter
    (550, "REJECTED - Blacklisted URL in message. (example.com) in [black]. See http://lookup.uribl.com", "permanent", "spam", False, False),
    (556, "5.1.10 <someone@example.com>: Recipient address rejected: Domain example.com does not accept mail (nullMX)", "permanent", "bad-domain", True, False),
    (550, "5.7.27 Host does not accept mail", "permanent", "bad-domain", True, False),
    (550, "5.7.1 This host does not accept mail from 192.0.2.1", "permanent", "policy", False, False),
    (554, "5.7.1 <someone@example.ch>: Recipient address rejected: Access denied", "permanent", "policy", False, False),  # an access map's refusal
    (550, "<someone@example.jp>: Recipient address rejected.", "permanent", "bad-mailbox", True, False),
    (500, "Line limit exceeded", "permanent", "content", False, False),
    (552, "5.2.3 Message length exceeds limit set by recipient", "permanent", "quota", False, False),
    (554, "Host network not allowed - https://community.mimecast.com/docs/DOC-1369#554", "permanent", "policy", False, False),
    (550, "5.1.1 procmail: Couldn't create \"/var/spool/mail/someone\": No such user", "permanent", "other", False, False),
    # Exchange on premises, qmail, others
    (550, "5.3.4 ROUTING.SizeLimit; message size exceeds fixed maximum size for route", "permanent", "content", False, False),
    (554, "5.4.6 Hop count exceeded - possible mail loop", "permanent", "routing", False, False),
    (550, "sorry, no mailbox here by that name. (#5.1.1)", "permanent", "bad-mailbox", True, False),
    (452, "4.4.5 Insufficient disk space; try again later", "transient", "routing", False, True),
    (421, "4.3.2 Service not available, closing transmission channel", "transient", "routing", False, True),
    (250, "2.0.0 OK 1700000000 a1si1234567 - gsmtp", "delivered", None, False, False),
]
# fmt: on


@pytest.mark.parametrize(
    ("code", "text", "outcome", "bounce_class", "hard", "throttle"),
    REAL_REPLIES,
    ids=[f"{i:02d}-{r[0]}" for i, r in enumerate(REAL_REPLIES)],
)
def test_real_replies(
    code: int, text: str, outcome: str, bounce_class: str | None, hard: bool, throttle: bool
) -> None:
    verdict = classify(code, text)
    assert (verdict.outcome, verdict.bounce_class, verdict.hard, verdict.throttle) == (
        outcome,
        bounce_class,
        hard,
        throttle,
    ), text


def test_table_is_large_enough() -> None:
    assert len(REAL_REPLIES) >= 40


# --- the SMTP command a reply answered ------------------------------------------------------

# (code, text, command, quoted, gave_up, outcome, bounce_class, hard): the same words mean
# different things at different steps of the session.
# fmt: off
PHASE_REPLIES = [
    # at RCPT TO a "no such user" is about the recipient; after DATA a filter may be speaking
    (550, "User unknown", "RCPT", False, False, "permanent", "bad-mailbox", True),
    (550, "User unknown", "DOT", False, False, "permanent", "bad-mailbox", False),
    (550, "User unknown", "DATA", False, False, "permanent", "bad-mailbox", False),
    (550, "5.1.1 User unknown", "DOT", False, False, "permanent", "bad-mailbox", True),  # the code says so
    (550, "5.7.1 <a@example.net>: Recipient address rejected: user unknown", "RCPT", True, False, "permanent", "bad-mailbox", True),
    (550, "5.7.1 <a@example.net>: Recipient address rejected: user unknown", "DOT", True, False, "permanent", "policy", False),
    # ... unless the text is about us or a policy: Postfix checks the sender at RCPT TO too
    (550, "5.7.1 Your domain does not exist", "RCPT", False, False, "permanent", "policy", False),
    (550, "Your sending domain does not exist", "RCPT", False, False, "permanent", "policy", False),
    (550, "5.7.1 Requested action not taken: mailbox unavailable. Reject due to policy restrictions", "RCPT", False, False, "permanent", "policy", False),
    # at MAIL FROM, HELO or the greeting the reply is about us, not the recipient
    (550, "5.1.1 User unknown", "MAIL", False, False, "permanent", "policy", False),
    (550, "5.1.2 <mail.sluice.test>... Host unknown (Name server: mail.sluice.test: host not found)", "HELO", False, False, "permanent", "policy", False),
    (554, "Host not found in DNS", "CONN", False, False, "permanent", "policy", False),
    (521, "5.3.2 mx.example.net does not accept mail", "CONN", False, False, "permanent", "bad-domain", True),
    (554, "mx.example.net ESMTP No SMTP service here", "CONN", False, False, "permanent", "bad-domain", True),
    # a domain that does not exist is no filter's disguise, whenever it is said
    (550, "Domain old-company.example does not exist", "DOT", True, False, "permanent", "bad-domain", True),
    (550, "5.0.0 Message refused: the sender's domain does not exist", None, True, False, "permanent", "policy", False),
    (550, "5.0.0 Message filtered: Reply-To domain does not exist", None, True, False, "permanent", "policy", False),
    # RFC 5321: 551 answers RCPT TO only; "mailbox unavailable" is its 550 reply to RCPT TO
    (551, "User not local; please try <a@new.example>", None, True, False, "permanent", "bad-mailbox", True),
    (550, "5.5.0 Requested action not taken: mailbox unavailable (S2017062302)", None, True, False, "permanent", "bad-mailbox", True),
    (550, "The mailbox of this user has moved; no forwarding address", None, True, False, "permanent", "bad-mailbox", True),
    # the sending MTA gave up after a temporary "user unknown" at RCPT TO (a report's "failed")
    (450, "4.1.1 <a@example.org>: Recipient address rejected: User unknown in virtual alias table", "RCPT", True, True, "permanent", "bad-mailbox", True),
    (450, "4.1.1 <a@example.org>: Recipient address rejected: User unknown in virtual alias table", "RCPT", False, False, "transient", "bad-mailbox", False),
    (451, "4.3.0 Temporary local problem", None, True, True, "permanent", "other", False),
    # RFC 3463 X.4.4 "unable to route": no route to the domain at all, unless the name service
    # only failed for now ("try again")
    (554, "5.4.4 Unable to route to gone-domain.example", None, True, False, "permanent", "bad-domain", True),
    (550, "5.4.4 Host not found, try again", None, True, False, "permanent", "routing", False),
    (450, "4.4.3 Host or domain name not found. Name service error for name=example.com type=MX: Host not found, try again", None, True, True, "permanent", "routing", False),
    # x.7.1 is a refusal: Postfix's access map "Access denied" is not Microsoft's 5.4.1 directory
    (554, "5.7.1 <a@example.ch>: Recipient address rejected: Access denied", None, True, False, "permanent", "policy", False),
    (554, "5.7.1 <a@example.ch>: Recipient address rejected: Access denied", "RCPT", True, False, "permanent", "bad-mailbox", True),
    (550, "5.4.1 Recipient address rejected: Access denied. AS(201806281)", None, True, False, "permanent", "bad-mailbox", True),
]
# fmt: on


@pytest.mark.parametrize(
    ("code", "text", "command", "quoted", "gave_up", "outcome", "bounce_class", "hard"),
    PHASE_REPLIES,
    ids=[f"{i:02d}-{r[0]}-{r[2]}" for i, r in enumerate(PHASE_REPLIES)],
)
def test_the_command_answered_decides(
    code: int,
    text: str,
    command: Command | None,
    quoted: bool,
    gave_up: bool,
    outcome: str,
    bounce_class: str,
    hard: bool,
) -> None:
    verdict = classify(code, text, command=command, quoted=quoted, gave_up=gave_up)
    assert (verdict.outcome, verdict.bounce_class, verdict.hard) == (outcome, bounce_class, hard)


@settings(max_examples=300, deadline=None)
@given(
    code=st.integers(400, 599),
    text=texts,
    command=st.sampled_from(["CONN", "HELO", "MAIL"]),
    gave_up=st.booleans(),
)
def test_replies_about_us_are_never_hard_unless_the_domain_takes_no_mail(
    code: int, text: str, command: Command, gave_up: bool
) -> None:
    """A refusal of our connection, HELO name or sender says nothing about the recipient;
    only a greeting saying the host takes no mail at all (RFC 7504) is about the domain."""
    verdict = classify(code, text, command=command, gave_up=gave_up)
    if verdict.hard:
        assert command == "CONN"
        assert verdict.bounce_class == "bad-domain"
