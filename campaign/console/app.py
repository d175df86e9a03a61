"""`campaign serve`'s ASGI app: Starlette routes over the same core as the command line, every response with the
headers a page of personal data needs (no script, no framing, no referrer, no caching), and the checks made once
before it starts (a complete [console], demo mode only on loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from campaign import urls
from campaign.config import Config
from campaign.console import events, metrics, reports, review, routes
from campaign.console.context import PAGE_CSP, Console
from campaign.console.csrf import SECRET_ENV, Csrf
from campaign.console.identity import Jwks, Verifier, jwks_source_problem
from campaign.console.roles import Roles
from campaign.errors import ConfigError
from campaign.evidence import overview
from campaign.redaction import redact
from campaign.returns.providers.inbox import Inbox

log = logging.getLogger("campaign.console")

SECURITY_HEADERS = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer",
                    "x-frame-options": "DENY", "cross-origin-opener-policy": "same-origin"}


class SecurityHeaders:
    """Adds the security headers to every response; pages (anything but the stylesheet) are never cached, since
    most show personal data or who may do what."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])]
                have = {k.lower() for k, _ in headers}
                extra = dict(SECURITY_HEADERS)
                extra.setdefault("content-security-policy", PAGE_CSP)
                if b"cache-control" not in have:
                    extra["cache-control"] = "no-store"
                headers += [(k.encode(), v.encode()) for k, v in extra.items() if k.encode() not in have]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def check(config: Config, host: str) -> None:
    """Refuse to start a console that could not prove who asks: [console] incomplete for `jwt`, a JWKS that is not
    there, or the demo personas anywhere but on a loopback address."""
    c = config.console
    Csrf.from_secret(os.environ.get(SECRET_ENV))  # a secret too short is refused before the server starts
    for provider in config.providers.values():  # [providers]: each secret set, each key a key
        Inbox.check(provider)
    if c.identity == "demo":
        if not urls.is_loopback(host):
            raise ConfigError(f"identity = \"demo\" lets anyone pick who they are: it listens on a loopback address "
                              f"only (--host 127.0.0.1), not {host}")
        return
    missing = c.missing()
    if missing:
        raise ConfigError(f"{c.source}: [console] identity = \"jwt\" needs {', '.join(missing)} (see "
                          "docs/console.md; `--identity demo` tries the console out on this machine)")
    assert c.jwks is not None
    problem = jwks_source_problem(c.jwks)
    if problem:
        raise ConfigError(f"{c.source}: [console] jwks: {problem}")


def create_app(config: Config, engine: Engine, *, fetch: Callable[[str], bytes] | None = None) -> Starlette:
    """The console over `engine`. `config.console` says how identities are proven and who holds which role;
    `config.providers`, which mail providers may post their events (`POST /events/{provider}`)."""
    c = config.console
    verifier = None
    if c.identity == "jwt":
        assert c.jwks is not None
        jwks = Jwks(c.jwks) if fetch is None else Jwks(c.jwks, fetch=fetch)
        verifier = Verifier(c, jwks)
    console = Console(config, engine, verifier, Roles(c.roles, demo=c.identity == "demo"),
                      csrf=Csrf.from_secret(os.environ.get(SECRET_ENV)))
    table: list[tuple[str, Callable[..., Any], list[str]]] = [
        ("/", routes.home, ["GET"]),
        ("/campaigns/{slug}", routes.campaign_page, ["GET"]),
        ("/campaigns/{slug}/review", review.review_page, ["GET"]),
        ("/campaigns/{slug}/review/{wave}/{locale}.html", review.message_page, ["GET"]),
        ("/campaigns/{slug}/approve", routes.approve, ["POST"]),
        ("/campaigns/{slug}/revoke", routes.revoke, ["POST"]),
        ("/campaigns/{slug}/pause", routes.pause, ["POST"]),
        ("/campaigns/{slug}/resume", routes.resume, ["POST"]),
        ("/campaigns/{slug}/report.csv", reports.report_csv, ["GET"]),
        ("/campaigns/{slug}/report.html", reports.report_html, ["GET"]),
        ("/api/campaigns/{slug}", routes.api_campaign, ["GET"]),
        ("/people", routes.people, ["GET"]),
        ("/healthz", routes.healthz, ["GET"]),
        ("/metrics", metrics.metrics, ["GET"]),
        ("/static/console.css", routes.stylesheet, ["GET"]),
        ("/demo/persona", routes.personas, ["GET", "POST"]),
        ("/events/{provider}", events.receive, ["POST"]),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Every campaign counted (or its kept count read) in the background from the start: the first page of a
        # campaign then waits for no count, or only for the rest of the one under way.
        try:
            slugs = await run_in_threadpool(overview.slugs, engine)
        except Exception as exc:  # no database yet, or not upgraded: /healthz says so, the pages each their own
            log.warning("console: not counting at start: %s", redact(str(exc)))
            slugs = []
        warming = asyncio.create_task(console.counts.warm(slugs))
        yield
        warming.cancel()

    app = Starlette(routes=[Route(path, endpoint, methods=methods) for path, endpoint, methods in table],
                    lifespan=lifespan)
    app.state.console = console
    app.state.metrics = metrics.registry(engine)
    app.state.inbox = Inbox(engine, config.providers) if config.providers else None
    app.state.provider_counters = events.Counters(app.state.metrics)
    app.add_middleware(SecurityHeaders)
    return app
