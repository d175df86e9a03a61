"""Webhooks out (issue 25 item 2): delivering the outbox of campaign events, and the log of its deliveries."""
