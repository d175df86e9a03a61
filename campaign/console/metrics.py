"""`GET /metrics`: Prometheus' text format from a registry of the console's own, whose one collector reads, when
scraped, the counts as last counted and kept in the database (deliveries by campaign, wave and state; setting
changes by state; when each campaign was counted: at most about 15 s before, while the console is scraped) and the
scheduler's lease and last finished step — nothing counted in this process, so several consoles agree, and a
scrape scans no ledger (a second at a million accounts, at every scrape, before)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from campaign.console.context import Console, guarded
from campaign.console.identity import Identity
from campaign.evidence import overview

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class DatabaseCollector(Collector):
    """Reads the aggregates at every scrape."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        g = overview.gauges_of(self.engine)
        deliveries = GaugeMetricFamily("campaign_deliveries", "Deliveries in the ledger by campaign, wave and state",
                                       labels=["campaign", "wave", "state"])
        for campaign, wave, state, n in g.deliveries:
            deliveries.add_metric([campaign, wave, state], n)
        yield deliveries
        changes = GaugeMetricFamily("campaign_setting_changes", "Setting changes (the flip) by campaign and state",
                                    labels=["campaign", "state"])
        for campaign, state, n in g.changes:
            changes.add_metric([campaign, state], n)
        yield changes
        counted = GaugeMetricFamily("campaign_counted_timestamp_seconds",
                                    "When the campaign's deliveries and changes above were counted",
                                    labels=["campaign"])
        for campaign, at in g.counted_at:
            counted.add_metric([campaign], at.timestamp())
        yield counted
        if g.lease_expires_at is not None:
            yield GaugeMetricFamily("campaign_scheduler_lease_expires_timestamp_seconds",
                                    "When the leading scheduler's lease runs out (renewed every third of it)",
                                    value=g.lease_expires_at.timestamp())
        if g.last_step_at is not None:
            yield GaugeMetricFamily("campaign_scheduler_last_step_finished_timestamp_seconds",
                                    "When the scheduler last finished a step", value=g.last_step_at.timestamp())


def registry(engine: Engine) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(DatabaseCollector(engine))
    return reg


@guarded("read")
async def metrics(console: Console, request: Request, who: Identity) -> Response:
    await console.counts.every()  # an old count is counted again in the background; a first one begun
    body = await run_in_threadpool(generate_latest, request.app.state.metrics)
    return Response(body, media_type=CONTENT_TYPE)
