"""`POST /events/{provider}`: what a mail provider saw (delivered, bounced, complained, delayed), posted by the
provider itself. No sign-in and no CSRF token here — a provider cannot sign in: each request is proven by the
provider's own signature (`campaign.returns.providers.verify`), and one that is not is refused (401) and counted
(`campaign_provider_events_refused_total`, by provider and reason). A provider not configured: 404."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from campaign.console.context import read_body
from campaign.errors import CampaignError
from campaign.redaction import redact
from campaign.returns.providers.events import Malformed
from campaign.returns.providers.inbox import Inbox
from campaign.returns.providers.verify import Refused

log = logging.getLogger("campaign.console")
MAX_BODY = 4 * 1024 * 1024  # SendGrid posts batches of events; nothing a provider sends is near this


class Counters:
    """The requests refused, and the events taken in, counted in this process (a signature that fails is never
    written to the database: whoever forges requests must not be able to fill it)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.refused = Counter("campaign_provider_events_refused", "Provider event requests refused (401), by "
                               "provider and reason", ["provider", "reason"], registry=registry)
        self.taken = Counter("campaign_provider_events", "Provider events taken in, by provider and kind (new ones; "
                             "a replay or a retry is not counted)", ["provider", "kind"], registry=registry)


async def receive(request: Request) -> Response:
    inbox: Inbox | None = request.app.state.inbox
    name = request.path_params["provider"]
    if inbox is None or name not in inbox.providers:
        return PlainTextResponse("404 Not Found: no such provider is configured ([providers] in campaign.toml)\n",
                                 status_code=404)
    counters: Counters = request.app.state.provider_counters
    body = await read_body(request, MAX_BODY)
    if body is None:
        return PlainTextResponse(f"413 a provider's post is at most {MAX_BODY} bytes\n", status_code=413)
    try:
        answer = await run_in_threadpool(inbox.receive, name, request.headers, body)
    except Refused as exc:
        counters.refused.labels(name, exc.reason).inc()
        log.warning("providers: 401 %s: %s (%s)", request.url.path, redact(str(exc), 300), exc.reason)
        return PlainTextResponse("401 Unauthorized: the request's signature does not verify.\n", status_code=401)
    except Malformed as exc:
        return PlainTextResponse(f"400 {redact(str(exc), 200)}\n", status_code=400)
    except CampaignError as exc:  # the configuration or the database: the provider retries later
        log.error("providers: %s failed: %s", request.url.path, redact(str(exc), 500))
        return PlainTextResponse("503 not taken in now: retry later\n", status_code=503)
    for kind, n in answer.body.get("kinds", {}).items():
        counters.taken.labels(name, kind).inc(n)
    return JSONResponse(answer.body)
