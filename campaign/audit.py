"""Audit events (kept for callers not yet moved to `campaign.store.audit`)."""

from campaign.store.audit import record

__all__ = ["record"]
