"""Moved to `campaign.store.deliveries` (the send ledger's statements, in SQLAlchemy Core).

Only `counts` is left here, for `campaign.reports` until it calls the store; delete this module then.
"""

from campaign.store.deliveries import counts

__all__ = ["counts"]
