"""Every SQL statement of the product, in SQLAlchemy Core over the model tables.

The verbs (import, create, send, status, flip, …) say what happens; the modules here say how it is kept:

- `audience`     who is affected (owns a device still at `from`), who was changed, counts by group
- `people`       accounts, devices and settings: staged, set-based imports
- `campaigns`    campaign and wave rows: register, replace, list, states
- `deliveries`   the send ledger: materialize, claim under lease, record, reclaim, counts
- `workers`      live sending processes and their heartbeats
- `suppressions` addresses never to be mailed
- `changes`      the flip and its rollback: setting changes written with the device settings they change
- `steps`        a campaign's scheduled steps, claimed once, and the scheduler's leadership
- `approvals`    the events an approval is decided by
- `bounces`      returned mail: its rows, the deliveries it is about, their late change of state
- `provider_events` what a mail provider reported (`POST /events/{provider}`), its one-time tokens, and a
                 delivery's acceptance by the recipient's server
- `evidence`     what the evidence reads: status (rates, the flip's counts), every account, one person's story,
                 the HTML report's aggregates
- `audit`        audit events
- `schema`       the schema's revision (Alembic's table)

Every function takes the caller's `Connection` and never commits: the caller owns the transaction
(`campaign.db.transaction` for commands). Raw SQL appears only where Core cannot say it (a pragma, COPY,
temporary-table DDL), each with a comment.
"""
