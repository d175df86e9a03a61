"""Returned mail as relays write it, made from a message we sent: Postfix (a DSN with the whole message or its
headers only; a delay warning; giving up), Exim (its own text format with X-Failed-Recipients), Microsoft
Exchange Online, Google, qmail, an ARF complaint as feedback loops send it, an out-of-office reply, and a
bounce about mail that is not ours. Shaped after what each relay really sends; the addresses, hosts and ids
are made up.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

RELAY = "mail.relay.example"
WHEN = "Fri, 14 Mar 2025 07:05:12 +0000"


@dataclass(frozen=True)
class Sent:
    """A message as it left: envelope sender, recipient, bytes."""

    sender: str
    recipient: str
    data: bytes

    @property
    def headers(self) -> str:
        text = self.data.decode("utf-8", errors="replace").replace("\r\n", "\n")
        return text.split("\n\n", 1)[0] + "\n"

    @property
    def message(self) -> str:
        return self.data.decode("utf-8", errors="replace").replace("\r\n", "\n")

    @property
    def subject(self) -> str:
        for line in self.headers.splitlines():
            if line.lower().startswith("subject:"):
                return line.split(":", 1)[1].strip()
        return ""

    def with_return_path(self) -> str:
        """The message as the final server stored it: with the envelope sender as Return-Path."""
        return f"Return-Path: <{self.sender}>\n" + self.message


def padded(sent: Sent, size: int) -> Sent:
    """The same message grown to about `size` bytes by lines of text at the end of its body (a relay that returns
    the whole message returns them all)."""
    line = b"z" * 76 + b"\r\n"
    return Sent(sent.sender, sent.recipient, sent.data + line * max((size - len(sent.data)) // len(line), 0))


def _id(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16].upper()


def _crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def postfix(sent: Sent, status: str = "5.1.1", action: str = "failed", headers_only: bool = False,
            to: str | None = None) -> bytes:
    """Postfix's DSN: `Undelivered Mail Returned to Sender`, or `Delayed Mail (still being retried)`."""
    qid = _id("postfix", sent.recipient, status, action, str(headers_only))[:10]
    boundary = f"{qid}.1710399912/{RELAY}"
    rcpt = sent.recipient
    if action == "delayed":
        subject, what = "Delayed Mail (still being retried)", (
            "####################################################################\n"
            "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\n"
            "####################################################################\n\n"
            "Your message could not be delivered for more than 4 hour(s).\n"
            "It will be retried until it is 5 day(s) old.\n")
        diagnostic = "X-Postfix; connect to mx.example.net[192.0.2.25]:25: Connection timed out"
        extra = "Will-Retry-Until: Wed, 19 Mar 2025 07:05:10 +0000 (UTC)\n"
    elif status.startswith("4"):
        subject, what = "Undelivered Mail Returned to Sender", (
            "I'm sorry to have to inform you that your message could not\n"
            "be delivered to one or more recipients. It's attached below.\n")
        diagnostic = "X-Postfix; delivery temporarily suspended: connect to mx.example.net[192.0.2.25]:25: " \
                     "Connection timed out"
        extra = ""
    else:
        subject, what = "Undelivered Mail Returned to Sender", (
            "I'm sorry to have to inform you that your message could not\n"
            "be delivered to one or more recipients. It's attached below.\n")
        diagnostic = f"smtp; 550 {status} <{rcpt}>: Recipient address\n    rejected: User unknown in virtual " \
                     "mailbox table"
        extra = "Remote-MTA: dns; mx.example.net\n"
    if headers_only:
        returned = ("Content-Description: Undelivered Message Headers\nContent-Type: text/rfc822-headers\n"
                    "Content-Transfer-Encoding: 8bit\n\n" + sent.headers)
    else:
        returned = ("Content-Description: Undelivered Message\nContent-Type: message/rfc822\n"
                    "Content-Transfer-Encoding: 8bit\n\n" + sent.message)
    to = to or sent.sender
    return _crlf(f"""\
Return-Path: <>
X-Original-To: {to}
Delivered-To: {to}
Received: by {RELAY} (Postfix)
\tid {qid}; Fri, 14 Mar 2025 07:05:12 +0000 (UTC)
Date: {WHEN} (UTC)
From: MAILER-DAEMON@{RELAY} (Mail Delivery System)
Subject: {subject}
To: {to}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="{boundary}"
Content-Transfer-Encoding: 8bit
Message-Id: <20250314070512.{qid}@{RELAY}>

This is a MIME-encapsulated message.

--{boundary}
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host {RELAY}.

{what}
For further assistance, please send mail to postmaster.

If you do so, please include this problem report. You can
delete your own text from the attached returned message.

                   The mail system

<{rcpt}>: host mx.example.net[192.0.2.25] said: {diagnostic.split("; ", 1)[1]}

--{boundary}
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; {RELAY}
X-Postfix-Queue-ID: {qid}
X-Postfix-Sender: rfc822; {sent.sender}
Arrival-Date: Fri, 14 Mar 2025 07:05:10 +0000 (UTC)

Final-Recipient: rfc822; {rcpt}
Original-Recipient: rfc822;{rcpt}
Action: {action}
Status: {status}
{extra}Diagnostic-Code: {diagnostic}

--{boundary}
{returned}
--{boundary}--
""")


def exim(sent: Sent, to: str | None = None) -> bytes:
    """Exim's own bounce: plain text, the failed address in X-Failed-Recipients, the message copied inline."""
    mid = _id("exim", sent.recipient)
    to = to or sent.sender
    return _crlf(f"""\
Return-path: <>
Envelope-to: {to}
Delivery-date: Fri, 14 Mar 2025 07:05:14 +0000
Received: from mail by relay.exim.example with local (Exim 4.96)
\tid 1tsz5C-{mid[:6]}-2b
\tfor {to}; Fri, 14 Mar 2025 07:05:14 +0000
X-Failed-Recipients: {sent.recipient}
Auto-Submitted: auto-replied
From: Mail Delivery System <Mailer-Daemon@relay.exim.example>
To: {to}
Content-Type: text/plain; charset=us-ascii
Subject: Mail delivery failed: returning message to sender
Message-Id: <E1tsz5C-{mid[:6]}-{mid[6:10]}@relay.exim.example>
Date: Fri, 14 Mar 2025 07:05:14 +0000

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  {sent.recipient}
    host mx.example.net [192.0.2.25]
    SMTP error from remote mail server after RCPT TO:<{sent.recipient}>:
    550 5.1.1 <{sent.recipient}>: Recipient address rejected: User unknown

------ This is a copy of the message, including all the headers. ------

{sent.message}""")


def exchange(sent: Sent) -> bytes:
    """Exchange Online's non-delivery report: a DSN with an HTML and a text explanation, status 5.1.10."""
    b = f"--_{_id('ms', sent.recipient)}_"
    alt = f"--_{_id('ms-alt', sent.recipient)}_"
    user, _, domain = sent.recipient.partition("@")
    return _crlf(f"""\
Received: from DM6PR12MB1234.namprd12.prod.outlook.com (2603:10b6:5:1c0::1) by
 DM6PR12MB1234.namprd12.prod.outlook.com with Microsoft SMTP Server id 15.20.8534.0
 via Mailbox Transport; Fri, 14 Mar 2025 07:05:13 +0000
MIME-Version: 1.0
From: <postmaster@contoso.onmicrosoft.com>
To: <{sent.sender}>
Date: Fri, 14 Mar 2025 07:05:13 +0000
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="{b[2:]}"
X-MS-Exchange-Message-Is-Ndr:
Content-Language: en-US
Message-ID: <{_id('ms-id', sent.recipient)}@DM6PR12MB1234.namprd12.prod.outlook.com>
In-Reply-To: <{sent.headers.split('Message-ID: ')[1].split('>')[0].lstrip('<')}>
Subject: Undeliverable: {sent.subject}
Auto-Submitted: auto-replied

{b}
Content-Type: multipart/alternative; differences=Content-Type;
\tboundary="{alt[2:]}"

{alt}
Content-Type: text/plain; charset="us-ascii"
Content-Transfer-Encoding: quoted-printable

Your message to {sent.recipient} couldn't be delivered.
{user} wasn't found at {domain}.

Action Required
Unknown To address

How to Fix It
The address may be misspelled or may not exist.

Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup'

{alt}
Content-Type: text/html; charset="us-ascii"
Content-Transfer-Encoding: quoted-printable

<html><body><p>Your message to <a href=3D"mailto:{sent.recipient}">{sent.recipient}</a> couldn't be
delivered.</p></body></html>

{alt}--

{b}
Content-Type: message/delivery-status

Reporting-MTA: dns;DM6PR12MB1234.namprd12.prod.outlook.com
Received-From-MTA: dns;{RELAY}
Arrival-Date: Fri, 14 Mar 2025 07:05:10 +0000

Final-Recipient: rfc822;{sent.recipient}
Action: failed
Status: 5.1.10
Diagnostic-Code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup
X-Display-Name: {user}

{b}
Content-Type: text/rfc822-headers

{sent.with_return_path().split(chr(10) + chr(10), 1)[0]}

{b}--
""")


def google(sent: Sent) -> bytes:
    """Gmail's `Delivery Status Notification (Failure)`: HTML and text, a DSN with X-Original-Message-ID, and the
    whole message."""
    b = f"0000000000{_id('g', sent.recipient).lower()}"
    mid = sent.headers.split("Message-ID: ")[1].split("\n")[0].strip()
    return _crlf(f"""\
Delivered-To: {sent.sender}
Received: by 2002:a05:6a10:1234:b0:5c1:0:0 with SMTP id z20csp123456pxb;
        Fri, 14 Mar 2025 00:05:13 -0700 (PDT)
Return-Path: <>
Received: from mail-sor-f69.google.com (mail-sor-f69.google.com. [209.85.220.69])
        by mx.google.com; Fri, 14 Mar 2025 00:05:13 -0700 (PDT)
MIME-Version: 1.0
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: {sent.sender}
Auto-Submitted: auto-replied
Subject: Delivery Status Notification (Failure)
References: {mid}
In-Reply-To: {mid}
X-Failed-Recipients: {sent.recipient}
Message-ID: <67d3d539.{_id('g-id', sent.recipient).lower()}@mx.google.com>
Date: Fri, 14 Mar 2025 00:05:13 -0700 (PDT)
Content-Type: multipart/report; boundary="{b}"; report-type=delivery-status

--{b}
Content-Type: text/plain; charset="UTF-8"

** Address not found **

Your message wasn't delivered to {sent.recipient} because the address couldn't be found, or is unable to \
receive mail.

Learn more here: https://support.google.com/mail/?p=NoSuchUser

The response was:

550 5.1.1 The email account that you tried to reach does not exist. Please try double-checking the \
recipient's email address for typos or unnecessary spaces.

--{b}
Content-Type: message/delivery-status

Reporting-MTA: dns; googlemail.com
Received-From-MTA: dns; {RELAY}
Arrival-Date: Fri, 14 Mar 2025 00:05:12 -0700 (PDT)
X-Original-Message-ID: {mid}

Final-Recipient: rfc822; {sent.recipient}
Action: failed
Status: 5.1.1
Remote-MTA: dns; gmail-smtp-in.l.google.com. (2607:f8b0:4864:20::1b, the server for the domain gmail.com.)
Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach does not exist. Please try
 550-5.1.1 double-checking the recipient's email address for typos or
 550-5.1.1 unnecessary spaces. For more information, go to
 550 5.1.1  https://support.google.com/mail/?p=NoSuchUser a1si123456pjb.25 - gsmtp
Last-Attempt-Date: Fri, 14 Mar 2025 00:05:13 -0700 (PDT)

--{b}
Content-Type: message/rfc822

{sent.message}
--{b}--
""")


def qmail(sent: Sent) -> bytes:
    """qmail's own bounce (`failure notice`): plain text, the message quoted after a line of dashes."""
    return _crlf(f"""\
Return-Path: <>
Delivered-To: {sent.sender}
Date: 14 Mar 2025 07:05:15 -0000
Message-ID: <20250314070515.{_id('q', sent.recipient).lower()}.qmail@mx.qmail.example>
From: MAILER-DAEMON@mx.qmail.example
To: {sent.sender}
Subject: failure notice

Hi. This is the qmail-send program at mx.qmail.example.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<{sent.recipient}>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

{sent.message}""")


def arf(sent: Sent, feedback: str = "abuse", to: str = "fbl@example.com") -> bytes:
    """A complaint as a feedback loop sends it (ARF, RFC 5965): the report, then the message as it was stored,
    Return-Path included."""
    b = f"----=_Part_{_id('arf', sent.recipient)}"
    return _crlf(f"""\
Return-Path: <feedback@arf.mail.example>
From: Mail AntiSpam Feedback <feedback@arf.mail.example>
To: {to}
Subject: FW: {sent.subject}
Date: Sat, 15 Mar 2025 10:11:12 +0000
Message-ID: <arf.{_id('arf-id', sent.recipient).lower()}@arf.mail.example>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report;
\tboundary="{b}"

--{b}
Content-Type: text/plain; charset="US-ASCII"
Content-Transfer-Encoding: 7bit

This is an email abuse report for an email message received from IP 192.0.2.10 on Fri, 14 Mar 2025
07:05:12 +0000. For more information about this format please see https://tools.ietf.org/html/rfc5965.

--{b}
Content-Type: message/feedback-report

Feedback-Type: {feedback}
User-Agent: Example-Mail-Feedback/2.0
Version: 1
Original-Mail-From: <{sent.sender}>
Original-Rcpt-To: <{sent.recipient}>
Arrival-Date: Fri, 14 Mar 2025 07:05:12 +0000
Reported-Domain: example.com
Source-IP: 192.0.2.10

--{b}
Content-Type: message/rfc822
Content-Disposition: inline

{sent.with_return_path()}
--{b}--
""")


def foreign(to: str = "bounces@example.com") -> bytes:
    """A bounce about a message that is not ours (another system's Message-ID, no token): cannot be matched."""
    other = Sent("someone@elsewhere.example", "ghost@example.org",
                 b"From: someone@elsewhere.example\nTo: ghost@example.org\nSubject: Lunch\n"
                 b"Message-ID: <CAF=lunch123@mail.elsewhere.example>\n\nSee you at noon.\n")
    return postfix(other, headers_only=True, to=to)


def auto_reply(to: str, subject: str = "Out of office") -> bytes:
    """An out-of-office reply: not a report of anything."""
    return _crlf(f"""\
Return-Path: <pat@example.net>
From: Pat Example <pat@example.net>
To: {to}
Subject: {subject}
Date: Fri, 14 Mar 2025 08:00:00 +0000
Message-ID: <ooo.{_id('ooo', to, subject).lower()}@example.net>
Auto-Submitted: auto-replied
Content-Type: text/plain; charset=us-ascii

I am out of the office until Monday and will read your message when I am back.
""")


def forge(raw: bytes, token: str) -> bytes:
    """The same returned message, every token replaced by `token` (a forger's), and a Message-ID of its own."""
    import re
    text = raw.decode("utf-8")
    text = re.sub(r"\+[a-z2-7]{32}@", f"+{token}@", text)
    text = re.sub(r"(?im)^(Message-I[dD]: <)", r"\1forged.", text, count=1)
    return text.encode("utf-8")
