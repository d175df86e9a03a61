"""`GET /campaigns/{slug}/review`: the review packet an approver signs off (`campaign.evidence.packet`), with
the approve form for those who may; and each message's HTML as it would be sent, for the stand-in, on a page of
its own (its inline styles allowed, no script)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from campaign.console.context import DOCUMENT_CSP, Console, guarded, render
from campaign.console.identity import Identity
from campaign.evidence import packet


@guarded("read")
async def review_page(console: Console, request: Request, who: Identity) -> Response:
    p = await run_in_threadpool(packet.packet, console.engine, console.config.templates, request.path_params["slug"])
    return render(console, request, "review.html.j2", who, p=p, may_approve=p.standing.defined_by != who.email)


@guarded("read")
async def message_page(console: Console, request: Request, who: Identity) -> Response:
    rendered = await run_in_threadpool(packet.message, console.engine, console.config.templates,
                                       request.path_params["slug"], request.path_params["wave"],
                                       request.path_params["locale"])
    # The message's own HTML, its values escaped by its templates (they autoescape); this page may run no script.
    return HTMLResponse(rendered.html, headers={"Content-Security-Policy": DOCUMENT_CSP})
