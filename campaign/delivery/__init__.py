"""Sending a wave: the send loop and its workers, the transports (SMTP, Maildir), the sending policies, signed return
paths."""
