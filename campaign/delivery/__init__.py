"""Sending a wave: `sending` (the command), the worker and its parts, the worker processes, and the transports (SMTP
with its PIPELINING fast path, Maildir, recording). The sending policies and signed return paths are beside it
(`campaign.policies`, `campaign.verp`): the store and the definition use them too."""
