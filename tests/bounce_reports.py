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


# --- verdicts that did not carry over outside the corpus -------------------------------------
# One report per kind of disagreement seen on real bounces of the corpus's families that are
# not in it; each is in the layout of the MTA named, with text of our own.

# A dead address read as soft ---------------------------------------------------------------

# Sendmail relaying a 551 (RFC 5321: an answer to RCPT TO only) with no enhanced code
SENDMAIL_USER_NOT_LOCAL = _crlf("""
From: Mail Delivery Subsystem <MAILER-DAEMON@relay.example.org>
To: <bounces+b01@sluice.test>
Subject: Returned mail: see transcript for details
Auto-Submitted: auto-generated (failure)
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="S1"

--S1

The original message was received at Tue, 4 Jun 2024 09:12:01 +0200
from mx.sluice.test [192.0.2.10]

   ----- The following addresses had permanent fatal errors -----
<mia@example.org>
    (reason: 551 User not local; please try <mia@newjob.example>)

--S1
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.example.org
Received-From-MTA: DNS; mx.sluice.test
Arrival-Date: Tue, 4 Jun 2024 09:12:01 +0200

Final-Recipient: RFC822; mia@example.org
Action: failed
Status: 5.0.0
Remote-MTA: DNS; mail.example.org
Diagnostic-Code: SMTP; 551 User not local; please try <mia@newjob.example>
Last-Attempt-Date: Tue, 4 Jun 2024 09:12:03 +0200

--S1
Content-Type: text/rfc822-headers

From: news@sluice.test
To: mia@example.org
Subject: Summer catalogue
Message-ID: <01J0B01MOVED@sluice.test>

--S1--
""")

# A gateway's DSN quoting "has moved" with only a generic status
GATEWAY_HAS_MOVED = _crlf("""
From: postmaster@gw.example.com
To: bounces+b02@sluice.test
Subject: Delivery Status Notification (Failure)
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="S2"

--S2
Content-Type: text/plain

This is an automatically generated Delivery Status Notification.

Delivery to the following recipients failed.

       paul@example.com

--S2
Content-Type: message/delivery-status

Reporting-MTA: dns;gw.example.com

Final-Recipient: rfc822;paul@example.com
Action: failed
Status: 5.0.0
Diagnostic-Code: smtp;550 The mailbox of this user has moved; no forwarding address

--S2--
""")

# IMail-style notice: the receiving server speaks for its own mailboxes, no reply quoted
IMAIL_UNKNOWN_USER = _crlf("""
From: postmaster@mail.example.co.jp
To: bounces+b03@sluice.test
Subject: Undeliverable Mail
Date: Tue, 4 Jun 2024 18:00:00 +0900
MIME-Version: 1.0
Content-Type: text/plain

Unknown user: taro.yamada@example.co.jp


Original message follows.

Received: from mx.sluice.test [192.0.2.10] by mail.example.co.jp
  (SMTPD-12.5) id A1B2C3; Tue, 4 Jun 2024 18:00:00 +0900
Message-ID: <01J0B03IMAIL@sluice.test>
From: news@sluice.test
To: taro.yamada@example.co.jp
Subject: Summer catalogue

Hello
""")

# A mobile carrier's own notice: no reply code, no enhanced code
CARRIER_UNKNOWN_USER = _crlf("""
From: Mail Administrator <postmaster@mms.carrier.example>
To: bounces+b04@sluice.test
Subject: Undeliverable Message
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

Your message could not be delivered to the following address.

  hanako-0901@mms.carrier.example : unknown user

Please check the address and send your message again.
This is an automatically generated message; please do not reply.
""")

# Exchange Online relaying Outlook.com's refusal ("550 5.5.0 ... mailbox unavailable")
EXCHANGE_MAILBOX_UNAVAILABLE = _crlf("""
From: Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@fabrikam.example>
To: <news@sluice.test>
Subject: Undeliverable: Summer catalogue
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="S5"

--S5
Content-Type: text/plain; charset="us-ascii"

Delivery has failed to these recipients or groups:

lena@outlook.example
The email address you entered couldn't be found.

Diagnostic information for administrators:

Generating server: DM6PR01MB1111.prod.fabrikam.example

lena@outlook.example
Remote Server returned '550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302). [BL02EPF0001A104.namprd02.prod.outlook.example]'

--S5
Content-Type: message/delivery-status

Reporting-MTA: dns;DM6PR01MB1111.prod.fabrikam.example
Received-From-MTA: dns;mx.sluice.test
Arrival-Date: Tue, 4 Jun 2024 08:00:00 +0000

Final-Recipient: rfc822;lena@outlook.example
Action: failed
Status: 5.5.0
Diagnostic-Code: smtp;550 5.5.0 Requested action not taken: mailbox unavailable
 (S2017062302). [BL02EPF0001A104.namprd02.prod.outlook.example]

--S5--
""")

# Postfix relaying a "user unknown" from an access map that answers 5.7.1 at RCPT TO
POSTFIX_USER_UNKNOWN_571 = _crlf("""
From: MAILER-DAEMON@mx.sluice.test (Mail Delivery System)
To: bounces+b06@sluice.test
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="S6"

--S6
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.sluice.test.

<olga@example.net>: host mx.example.net[192.0.2.33] said: 550 5.7.1
    <olga@example.net>: Recipient address rejected: user unknown (in reply to
    RCPT TO command)

--S6
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.sluice.test

Final-Recipient: rfc822; olga@example.net
Action: failed
Status: 5.7.1
Remote-MTA: dns; mx.example.net
Diagnostic-Code: smtp; 550 5.7.1 <olga@example.net>: Recipient address rejected:
    user unknown

--S6--
""")

# Postfix giving up after days of "450 4.1.1 ... User unknown in virtual alias table"
POSTFIX_VIRTUAL_ALIAS_450 = _crlf("""
From: MAILER-DAEMON@mx.sluice.test (Mail Delivery System)
To: bounces+b07@sluice.test
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="S7"

--S7
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.sluice.test.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

<ines@example.org>: host mx.example.org[192.0.2.44] said: 450 4.1.1
    <ines@example.org>: Recipient address rejected: User unknown in virtual
    alias table (in reply to RCPT TO command)

--S7
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.sluice.test
Arrival-Date: Fri, 31 May 2024 10:00:00 +0000 (UTC)

Final-Recipient: rfc822; ines@example.org
Original-Recipient: rfc822;ines@example.org
Action: failed
Status: 4.1.1
Remote-MTA: dns; mx.example.org
Diagnostic-Code: smtp; 450 4.1.1 <ines@example.org>: Recipient address rejected:
    User unknown in virtual alias table

--S7--
""")

# Exim: a relay that accepted the recipient says, after the message, the domain does not exist
EXIM_DOMAIN_NOT_EXIST_AFTER_DATA = _crlf("""
From: Mail Delivery System <Mailer-Daemon@smtp.example.de>
To: bounces+b08@sluice.test
Subject: Mail delivery failed: returning message to sender
Auto-Submitted: auto-replied
X-Failed-Recipients: jan@old-company.example

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  jan@old-company.example
    host relay.example.de [192.0.2.55]
    SMTP error from remote mail server after end of data:
    550 Domain old-company.example does not exist

------ This is a copy of the message, including all the headers. ------

Message-ID: <01J0B08EXIM@sluice.test>
From: news@sluice.test
To: jan@old-company.example
Subject: Summer catalogue

Hello
""")

# A smarthost that found no route at all for the recipient's domain (RFC 3463 X.4.4)
SMARTHOST_UNABLE_TO_ROUTE = _crlf("""
From: Mail Delivery System <MAILER-DAEMON@smarthost.example.net>
To: bounces+b09@sluice.test
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="S9"

--S9
Content-Type: text/plain

Your message could not be delivered to one or more recipients.

--S9
Content-Type: message/delivery-status

Reporting-MTA: dns; smarthost.example.net

Final-Recipient: rfc822; kai@gone-domain.example
Action: failed
Status: 5.4.4
Diagnostic-Code: smtp; 554 5.4.4 Unable to route to gone-domain.example

--S9--
""")

# A live address read as hard --------------------------------------------------------------

# A gateway's header check refusing the message: the Reply-To domain, not the recipient's
GATEWAY_FILTERED_500 = _crlf("""
From: Mail Delivery Subsystem <MAILER-DAEMON@gw.isp.example.jp>
To: <bounces+b10@sluice.test>
Subject: Returned mail: see transcript for details
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="S10"

--S10

   ----- The following addresses had permanent fatal errors -----
<yuki@isp.example.jp>
    (reason: 550 5.0.0 Message filtered: Reply-To domain does not exist)

--S10
Content-Type: message/delivery-status

Reporting-MTA: dns; gw.isp.example.jp

Final-Recipient: RFC822; yuki@isp.example.jp
Action: failed
Status: 5.0.0
Diagnostic-Code: SMTP; 550 5.0.0 Message filtered: Reply-To domain does not exist

--S10--
""")

# A gateway refusing the message because *our* domain does not resolve (a policy, not the address)
GATEWAY_SENDER_DOMAIN_500 = _crlf("""
From: postmaster@gw.example.com
To: bounces+b11@sluice.test
Subject: Delivery Status Notification (Failure)
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="S11"

--S11
Content-Type: text/plain

Delivery to the following recipients failed.

       rosa@example.com

--S11
Content-Type: message/delivery-status

Reporting-MTA: dns;gw.example.com

Final-Recipient: rfc822;rosa@example.com
Action: failed
Status: 5.0.0
Diagnostic-Code: smtp;550 5.0.0 Message refused: the sender's domain does not exist

--S11--
""")

# Amazon SES: the receiving server's access map refused the message (5.7.1, a security refusal)
SES_SECURITY_REFUSAL = _crlf("""
From: no-reply@sns.amazonaws.com
To: bounces+b12@sluice.test
Subject: AWS Notification Message
MIME-Version: 1.0
Content-Type: text/plain; charset=UTF-8

{"notificationType":"Bounce","bounce":{"feedbackId":"0100018fdd-abc","bounceType":"Permanent",
"bounceSubType":"General","bouncedRecipients":[{"emailAddress":"tom@example.ch","action":"failed",
"status":"5.7.1","diagnosticCode":"smtp; 554 5.7.1 <tom@example.ch>: Recipient address rejected: Access denied"}],
"timestamp":"2024-06-04T10:00:01.000Z","remoteMtaIp":"192.0.2.66","reportingMTA":"dsn; a8-1.smtp-out.amazonses.com"},
"mail":{"timestamp":"2024-06-04T10:00:00.000Z","source":"news@sluice.test","messageId":"0100018fdd-def",
"destination":["tom@example.ch"],"commonHeaders":{"from":["news@sluice.test"],"to":["tom@example.ch"],
"messageId":"<01J0B12SES@sluice.test>","subject":"Summer catalogue"}}}
""")

# A relay that gave up on a name-service failure that was only temporary ("try again")
RELAY_DNS_TRY_AGAIN = _crlf("""
From: Mail Delivery System <MAILER-DAEMON@relay.example.net>
To: bounces+b13@sluice.test
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="S13"

--S13
Content-Type: text/plain

Your message could not be delivered to one or more recipients.

--S13
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.example.net

Final-Recipient: rfc822; lea@example.com
Action: failed
Status: 5.4.4
Diagnostic-Code: X-Relay; lookup of the mail exchanger for example.com failed: Host not
    found, try again

--S13--
""")

# qmail: the receiving server refused *our* HELO name, not the recipient
QMAIL_HELO_REJECTED = _crlf("""
From: MAILER-DAEMON@mail.example.com
To: bounces+b14@sluice.test
Subject: failure notice

Hi. This is the qmail-send program at mail.example.com.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<sam@example.net>:
Connected to 192.0.2.77 but my name was rejected.
Remote host said: 550 5.1.2 <mail.example.com>... Host unknown (Name server: mail.example.com: host not found)

--- Below this line is a copy of the message.

Message-ID: <01J0B14QMAIL@sluice.test>
From: news@sluice.test
To: sam@example.net
Subject: Summer catalogue

Hello
""")

# Several recipients in one report ---------------------------------------------------------

# A summary listing the recipients, then the reply of each below it
NOTICE_TWO_RECIPIENTS = _crlf("""
From: Mail Delivery System <postmaster@mail.example.org>
To: bounces+b15@sluice.test
Subject: Undeliverable: Summer catalogue
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

Your message could not be delivered to the following recipients:

    ana@example.org
    bob@example.org

Details:

ana@example.org: 550 5.1.1 User unknown
bob@example.org: 552 5.2.2 Mailbox full

Original message headers follow.

Message-ID: <01J0B15TWO@sluice.test>
From: news@sluice.test
To: ana@example.org, bob@example.org
Subject: Summer catalogue
""")

# Delivery notices -------------------------------------------------------------------------

# Exchange's relay notice: no Action field, a 2.x.x status
EXCHANGE_RELAYED = _crlf("""
From: postmaster@contoso.example
To: news@sluice.test
Subject: Relayed: Summer catalogue
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="S16"

--S16
Content-Type: text/plain; charset="us-ascii"

Delivery to these recipients or groups is complete, but no delivery notification was sent
by the destination server:

dora@contoso.example

--S16
Content-Type: message/delivery-status

Reporting-MTA: dns;EX03.contoso.example

Final-Recipient: rfc822;dora@contoso.example
Status: 2.6.0
Remote-MTA: dns;mx.partner.example

--S16--
""")

# A plain-text success notice from a server that writes no DSN fields
PLAIN_DELIVERED = _crlf("""
From: Mail Delivery System <MAILER-DAEMON@mail.example.net>
To: bounces+b17@sluice.test
Subject: Delivery Status Notification (Success)
MIME-Version: 1.0
Content-Type: text/plain; charset=us-ascii

This is an automatically generated Delivery Status Notification.

Your message has been successfully delivered to the following recipients:

   eva@example.net: 250 2.0.0 OK queued as 4Vq9

Original message headers follow.

Message-ID: <01J0B17OK@sluice.test>
From: news@sluice.test
To: eva@example.net
Subject: Summer catalogue
""")

# A gateway's DSN: the remote MTA it names refused the very address, with no enhanced code
GATEWAY_REMOTE_NAMES_ADDRESS = _crlf("""
From: Mail Delivery Subsystem <postmaster@gw.example.net>
To: bounces+b20@sluice.test
Subject: Delivery Status
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="gw20"

--gw20
Content-Type: text/plain

Your message could not be delivered.
<hanako@example.net>   (Unknown user hanako@example.net)

--gw20
Content-Type: message/delivery-status

Reporting-MTA: dns; gw.example.net

Final-Recipient: rfc822; hanako@example.net
Action: failed
Status: 5.0.0
Diagnostic-Code: smtp; 550 Unknown user hanako@example.net
Remote-MTA: 198.51.100.25

--gw20--
""")
