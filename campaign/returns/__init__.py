"""Returned mail: reading Maildir, mbox and IMAP apart from matching bounces and complaints to their deliveries."""
