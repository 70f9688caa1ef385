"""Hand-written bounce reports, complaints and auto-replies (not from the corpus), one or more
per bounce class, as the MTAs and providers named write them. Shared by the parser, inbound
and command-line tests."""

from __future__ import annotations


def _crlf(text: str) -> bytes:
    return text.lstrip("\n").replace("\n", "\r\n").encode()


# --- hand-written reports -----------------------------------------------------------------

POSTFIX_USER_UNKNOWN = _crlf("""
Return-Path: <>
Date: Mon,  3 Jun 2024 10:00:02 +0000 (UTC)
From: MAILER-DAEMON@mx.sluice.test (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: bounces+abc@sluice.test
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
	boundary="4F1A23C0D1.1717408802/mx.sluice.test"
Message-Id: <20240603100002.9C2D23C0D2@mx.sluice.test>

This is a MIME-encapsulated message.

--4F1A23C0D1.1717408802/mx.sluice.test
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.sluice.test.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

<Nobody@Example.NET>: host mx.example.net[192.0.2.25] said: 550 5.1.1
    <Nobody@Example.NET>: Recipient address rejected: User unknown in virtual
    mailbox table (in reply to RCPT TO command)

--4F1A23C0D1.1717408802/mx.sluice.test
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.sluice.test
X-Postfix-Queue-ID: 4F1A23C0D1
Arrival-Date: Mon,  3 Jun 2024 10:00:01 +0000 (UTC)

Final-Recipient: rfc822; Nobody@Example.NET
Original-Recipient: rfc822;Nobody@Example.NET
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.example.net
Diagnostic-Code: smtp; 550 5.1.1 <Nobody@Example.NET>: Recipient address
    rejected: User unknown in virtual mailbox table

--4F1A23C0D1.1717408802/mx.sluice.test
Content-Description: Undelivered Message
Content-Type: message/rfc822

From: Shop <news@sluice.test>
To: Nobody@Example.NET
Subject: Your June newsletter
Message-ID: <01HZX3J6Q0ABCDEF@sluice.test>
X-Sluice-Message-ID: msg_01HZX3J6Q0ABCDEF
MIME-Version: 1.0
Content-Type: text/plain

Hello

--4F1A23C0D1.1717408802/mx.sluice.test--
""")

EXCHANGE_POLICY_BLOCK = _crlf("""
From: postmaster@contoso.example
To: news@sluice.test
Subject: Undeliverable: Your June newsletter
Content-Type: multipart/report; report-type=delivery-status;
	boundary="_000_NDR_contoso_"
MIME-Version: 1.0
Message-ID: <ndr-1@contoso.example>

--_000_NDR_contoso_
Content-Type: text/plain; charset="us-ascii"

Delivery has failed to these recipients or groups:

alice@contoso.example
Your message wasn't delivered because the recipient's email provider rejected it.

Diagnostic information for administrators:

Generating server: EX01.contoso.example
alice@contoso.example
Remote Server returned '550 5.7.1 Delivery not authorized, message refused by policy'

--_000_NDR_contoso_
Content-Type: message/delivery-status

Reporting-MTA: dns;EX01.contoso.example
Received-From-MTA: dns;mx.sluice.test
Arrival-Date: Mon, 3 Jun 2024 10:00:00 +0000

Final-Recipient: rfc822;alice@contoso.example
Action: failed
Status: 5.7.1
Diagnostic-Code: smtp;550 5.7.1 Delivery not authorized, message refused by policy

--_000_NDR_contoso_
Content-Type: text/rfc822-headers

From: Shop <news@sluice.test>
To: alice@contoso.example
Subject: Your June newsletter
Message-ID: <01HZX3J6Q1XYZ@sluice.test>

--_000_NDR_contoso_--
""")

GMAIL_DELAYED_QUOTA = _crlf("""
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: bounces+def@sluice.test
Subject: Delivery Status Notification (Delay)
Auto-Submitted: auto-replied
Message-ID: <5f1e@mx.google.com>
Content-Type: multipart/report; boundary="000000000000abcd"; report-type=delivery-status

--000000000000abcd
Content-Type: text/plain; charset="UTF-8"

** Delivery incomplete **

There was a temporary problem delivering your message to full@gmail.com.
Gmail will retry for 46 more hours.

The response was:

The email account that you tried to reach is over quota.

--000000000000abcd
Content-Type: message/delivery-status

Reporting-MTA: dns; googlemail.com
Arrival-Date: Mon, 03 Jun 2024 03:00:00 -0700 (PDT)

Final-Recipient: rfc822; full@gmail.com
Action: delayed
Status: 4.2.2
Remote-MTA: dns; gmail-smtp-in.l.google.com. (2607:f8b0::1b, the server for the domain gmail.com.)
Diagnostic-Code: smtp; 452-4.2.2 The email account that you tried to reach is over quota.
    Please direct the recipient to https://support.google.com/mail/?p=OverQuotaTemp - gsmtp
Last-Attempt-Date: Mon, 03 Jun 2024 05:00:00 -0700 (PDT)
Will-Retry-Until: Wed, 05 Jun 2024 03:00:00 -0700 (PDT)

--000000000000abcd
Content-Type: message/rfc822

Message-ID: <01HZX3J6Q2GMAIL@sluice.test>
From: news@sluice.test
To: full@gmail.com
Subject: Your June newsletter

Hello
--000000000000abcd--
""")

YAHOO_ARF = _crlf("""
From: feedbackloop@yahoo.com
To: fbl@sluice.test
Subject: FW: Your June newsletter
Date: Mon, 3 Jun 2024 12:00:00 +0000
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report;
	boundary="arf_boundary"
Message-ID: <fbl-77@yahoo.com>

--arf_boundary
Content-Type: text/plain; charset="US-ASCII"

This is an email abuse report for an email message received from IP 192.0.2.10.

--arf_boundary
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: Yahoo!-Mail-Feedback/2.0
Version: 1
Original-Mail-From: <bounces+ghi@sluice.test>
Original-Rcpt-To: <Complainer@Yahoo.com>
Arrival-Date: Mon, 03 Jun 2024 10:00:00 +0000
Source-IP: 192.0.2.10
Reported-Domain: sluice.test

--arf_boundary
Content-Type: message/rfc822
Content-Disposition: inline

From: Shop <news@sluice.test>
To: complainer@yahoo.com
Subject: Your June newsletter
Message-ID: <01HZX3J6Q3ARF@sluice.test>
X-Sluice-Message-ID: msg_01HZX3J6Q3ARF

Hello
--arf_boundary--
""")

OUT_OF_OFFICE = _crlf("""
From: Bob Example <Bob@Example.ORG>
To: news@sluice.test
Subject: Automatic reply: Your June newsletter
Auto-Submitted: auto-replied
X-Auto-Response-Suppress: All
In-Reply-To: <01HZX3J6Q4OOO@sluice.test>
Message-ID: <ooo-1@example.org>
Content-Type: text/plain; charset="utf-8"

I am out of the office until June 10 with limited access to email.
""")

QMAIL_NO_MAILBOX = _crlf("""
From: MAILER-DAEMON@mail.example.com
To: bounces+jkl@sluice.test
Subject: failure notice

Hi. This is the qmail-send program at mail.example.com.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<ghost@example.com>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

Message-ID: <01HZX3J6Q5QMAIL@sluice.test>
From: news@sluice.test
To: ghost@example.com
Subject: Your June newsletter

Hello
""")

EXIM_BLOCKLISTED = _crlf("""
From: Mail Delivery System <Mailer-Daemon@relay.example.de>
To: bounces+mno@sluice.test
Subject: Mail delivery failed: returning message to sender
Auto-Submitted: auto-replied
X-Failed-Recipients: kunde@example.de

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  kunde@example.de
    host mx.example.de [192.0.2.77]
    SMTP error from remote mail server after RCPT TO:<kunde@example.de>:
    550 5.7.1 Service unavailable; client [198.51.100.7] blocked using zen.spamhaus.org

------ This is a copy of the message, including all the headers. ------

Message-ID: <01HZX3J6Q6EXIM@sluice.test>
From: news@sluice.test
To: kunde@example.de
Subject: Your June newsletter

Hello
""")

# --- one report per remaining class -------------------------------------------------------

POSTFIX_NO_SUCH_DOMAIN = _crlf("""
From: MAILER-DAEMON@mx.sluice.test (Mail Delivery System)
To: bounces+pqr@sluice.test
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B1"

--B1
Content-Type: text/plain; charset=us-ascii

<someone@no-such-domain.example>: Host or domain name not found. Name service
    error for name=no-such-domain.example type=A: Host not found

--B1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.sluice.test

Final-Recipient: rfc822; someone@no-such-domain.example
Action: failed
Status: 5.4.4
Diagnostic-Code: X-Postfix; Host or domain name not found. Name service error
    for name=no-such-domain.example type=A: Host not found

--B1
Content-Type: text/rfc822-headers

From: news@sluice.test
To: someone@no-such-domain.example
Subject: Your June newsletter
Message-ID: <01HZX3J6Q7DOMAIN@sluice.test>

--B1--
""")

OFFICE365_MAILBOX_FULL = _crlf("""
From: Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso.example>
To: news@sluice.test
Subject: Undeliverable: Your June newsletter
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B2"

--B2
Content-Type: text/plain; charset="us-ascii"

Your message to carol@contoso.example couldn't be delivered.
carol's mailbox is full.

--B2
Content-Type: message/delivery-status

Reporting-MTA: dns;AM0PR01MB1234.eurprd01.prod.outlook.com

Final-Recipient: rfc822;carol@contoso.example
Action: failed
Status: 5.2.2
Diagnostic-Code: smtp;554 5.2.2 mailbox full;
 STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded

--B2
Content-Type: text/rfc822-headers

From: news@sluice.test
To: carol@contoso.example
Subject: Your June newsletter
Message-ID: <01HZX3J6Q8FULL@sluice.test>

--B2--
""")

GMAIL_SPAM_BLOCK = _crlf("""
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: bounces+stu@sluice.test
Subject: Delivery Status Notification (Failure)
MIME-Version: 1.0
Content-Type: multipart/report; boundary="B3"; report-type=delivery-status

--B3
Content-Type: text/plain; charset="UTF-8"

** Message blocked **

Your message to dave@example.net has been blocked.

--B3
Content-Type: message/delivery-status

Reporting-MTA: dns; googlemail.com

Final-Recipient: rfc822; dave@example.net
Action: failed
Status: 5.7.1
Remote-MTA: dns; mx.example.net. (192.0.2.40)
Diagnostic-Code: smtp; 550-5.7.1 [192.0.2.10] Our system has detected that this message is
    likely unsolicited mail. To reduce the amount of spam sent to Gmail, this message has
    been blocked. - gsmtp

--B3
Content-Type: text/rfc822-headers

From: news@sluice.test
To: dave@example.net
Subject: Your June newsletter
Message-ID: <01HZX3J6Q9SPAM@sluice.test>

--B3--
""")

SENDMAIL_TOO_BIG = _crlf("""
From: Mail Delivery Subsystem <MAILER-DAEMON@relay.example.org>
To: <bounces+vwx@sluice.test>
Subject: Returned mail: see transcript for details
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B4"

--B4

   ----- The following addresses had permanent fatal errors -----
<erin@example.org>
    (reason: 552 5.3.4 Message size exceeds fixed limit)

   ----- Transcript of session follows -----
... while talking to mx.example.org.:
>>> DATA
<<< 552 5.3.4 Message size exceeds fixed limit
554 5.0.0 Service unavailable

--B4
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.example.org

Final-Recipient: RFC822; erin@example.org
Action: failed
Status: 5.3.4
Diagnostic-Code: SMTP; 552 5.3.4 Message size exceeds fixed limit

--B4--
""")

EXCHANGE_EXPIRED = _crlf("""
From: postmaster@relay.example.com
To: news@sluice.test
Subject: Undeliverable: Your June newsletter
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B5"

--B5
Content-Type: text/plain; charset="us-ascii"

Delivery has failed to these recipients or groups:

frank@example.com
The message couldn't be delivered in the time allowed.

--B5
Content-Type: message/delivery-status

Reporting-MTA: dns;EX02.relay.example.com

Final-Recipient: rfc822;frank@example.com
Action: failed
Status: 4.4.7
Diagnostic-Code: smtp;550 4.4.7 QUEUE.Expired; message expired

--B5--
""")

LOCAL_MAILER_ERROR = _crlf("""
From: Mail Delivery Subsystem <MAILER-DAEMON@host.example.net>
To: <bounces+yz@sluice.test>
Subject: Returned mail: see transcript for details
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B6"

--B6

   ----- The following addresses had permanent fatal errors -----
"|/usr/local/bin/ticket-import"
    (reason: 255)
    (expanded from: <support@example.net>)

--B6
Content-Type: message/delivery-status

Reporting-MTA: dns; host.example.net

Final-Recipient: RFC822; support@example.net
Action: failed
Status: 5.3.0
Diagnostic-Code: X-Unix; 255

--B6--
""")

POSTFIX_DELIVERED = _crlf("""
From: MAILER-DAEMON@mx.sluice.test (Mail Delivery System)
To: bounces+abc1@sluice.test
Subject: Successful Mail Delivery Report
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B7"

--B7
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.sluice.test.

Your message was successfully delivered to the destination(s)
listed below.

<grace@example.org>: delivery via mx.example.org[192.0.2.8]:25: 250 2.0.0 Ok:
    queued as 4Vx1

--B7
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.sluice.test

Final-Recipient: rfc822; grace@example.org
Action: delivered
Status: 2.0.0
Diagnostic-Code: smtp; 250 2.0.0 Ok: queued as 4Vx1

--B7--
""")

# A bare "user unknown" relayed by another system, without the command it answered
RELAYED_USER_UNKNOWN = _crlf("""
From: Mail Delivery System <MAILER-DAEMON@gw.example.jp>
To: bounces+abc2@sluice.test
Subject: Undelivered Mail
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B8"

--B8
Content-Type: text/plain

Your message could not be delivered.

--B8
Content-Type: message/delivery-status

Reporting-MTA: dns; gw.example.jp

Final-Recipient: rfc822; henry@example.jp
Action: failed
Status: 5.0.0
Diagnostic-Code: smtp; 550 user unknown

--B8--
""")
