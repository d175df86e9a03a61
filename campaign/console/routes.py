"""The console's routes: each a view of one core call, run in a thread (the core is synchronous), rendered by a
template. The paths are a contract (docs/console.md)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Awaitable, Callable
from importlib import resources

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from campaign import campaigns
from campaign.console.context import Console, guarded, read_form, render
from campaign.console.csrf import same_origin
from campaign.console.identity import PERSONA_COOKIE, PERSONAS, Identity
from campaign.cutoff import approval
from campaign.evidence import overview
from campaign.models import DELIVERY_STATES

# What a POST did, by a fixed key of the redirect (no text of the request goes back into a page).
DONE = {"approved": "Approved: your approval is recorded in the audit log under your verified email.",
        "already": "You had approved this version already; nothing was recorded.",
        "revoked": "Your approval was withdrawn.", "not_approved": "You had no approval of this version to withdraw.",
        "paused": "Paused: sending stops after the batches in flight.", "resumed": "Resumed.",
        "unchanged": "Nothing changed (it was in that state already)."}


FIRST_COUNT_WAIT = 0.1  # seconds a campaign's page waits for the campaign's very first count (a page in < 200 ms)


@guarded("read")
async def home(console: Console, request: Request, who: Identity) -> Response:
    lines = await run_in_threadpool(overview.overview, console.engine, await console.counts.every())
    return render(console, request, "home.html.j2", who, lines=lines)


@guarded("read")
async def campaign_page(console: Console, request: Request, who: Identity) -> Response:
    slug = request.path_params["slug"]
    # Waits a moment at most for a first count: a campaign not counted yet shows its page without counts.
    counted = await console.counts.get(slug, wait=FIRST_COUNT_WAIT)
    page = await run_in_threadpool(overview.page, console.engine, slug, None, counted, counted is None)
    did = DONE.get(request.query_params.get("did", ""))
    return render(console, request, "campaign.html.j2", who, page=page, st=page.status, did=did,
                  counted_at=counted.at if counted is not None else None, counting=counted is None,
                  cut_dt=dt.datetime.fromisoformat(page.status.cutoff), states=DELIVERY_STATES,
                  may_approve=page.status.approval.defined_by != who.email)


@guarded("read")
async def api_campaign(console: Console, request: Request, who: Identity) -> Response:
    slug = request.path_params["slug"]
    # ?fresh=1 counts now (seconds at a million accounts), else the console's last count, as the page shows
    counted = None if request.query_params.get("fresh") == "1" else await console.counts.get(slug)
    st = await run_in_threadpool(overview.status_with, console.engine, slug, counted)
    # the same document as `campaign status --json` prints (its json.dumps: default=str, non-ASCII kept)
    body = json.dumps(st.as_json(), indent=2, ensure_ascii=False, default=str)
    headers = {"Cache-Control": "no-store"}
    if counted is not None:
        headers["X-Counted-At"] = counted.at.isoformat()
    return Response(body, media_type="application/json", headers=headers)


async def _act(console: Console, request: Request, who: Identity, action: str) -> Response:
    slug = request.path_params["slug"]
    if action in ("approve", "revoke"):
        # A verified sign-in is a proof the core keeps (issuer, subject, token id); a demo persona is a typed name.
        approver = approval.Approver(who.email, "jwt", evidence=who.evidence()) if who.proof == "jwt" \
            else approval.Approver(who.email)
        outcome = await run_in_threadpool(lambda: approval.approve(console.engine, slug, approver,
                                                                   revoke=action == "revoke"))
        did = outcome.action
    else:
        words = await run_in_threadpool(campaigns.set_state, console.engine, slug, action, who.email)
        did = "unchanged" if " already " in words or " is not " in words else f"{action}d"
    return RedirectResponse(f"/campaigns/{slug}?did={did}", status_code=303)


def action(name: str) -> Callable[[Request], Awaitable[Response]]:
    """POST /campaigns/{slug}/NAME: approve, revoke, pause or resume, for those whose role grants it."""

    async def act(console: Console, request: Request, who: Identity) -> Response:
        return await _act(console, request, who, name)

    act.__name__ = name
    return guarded(name, post=True)(act)


approve, revoke, pause, resume = (action(name) for name in ("approve", "revoke", "pause", "resume"))


@guarded("people")
async def people(console: Console, request: Request, who: Identity) -> Response:
    q = request.query_params.get("q", "").strip()
    found = await run_in_threadpool(overview.people, console.engine, q) if q else None
    return render(console, request, "people.html.j2", who, q=q, found=found)


async def healthz(request: Request) -> Response:
    """Up, and the database answers (no identity: the load balancer asks)."""
    console: Console = request.app.state.console
    ok = await run_in_threadpool(overview.healthy, console.engine)
    return PlainTextResponse("ok\n" if ok else "database unreachable\n", status_code=200 if ok else 503)


async def stylesheet(request: Request) -> Response:
    css = resources.files("campaign.console").joinpath("templates/console.css").read_text("utf-8")
    return Response(css, media_type="text/css", headers={"Cache-Control": "max-age=3600"})


async def personas(request: Request) -> Response:
    """Demo mode: pick who you are (GET shows the list, POST sets the cookie)."""
    console: Console = request.app.state.console
    if not console.demo:
        return PlainTextResponse("404 Not Found\n", status_code=404)
    if request.method == "POST":
        if not same_origin(request.headers):
            return PlainTextResponse("403 Forbidden: the form came from another site\n", status_code=403)
        form = await read_form(request)
        name = (form or {}).get("persona", "")
        if name not in PERSONAS:
            return PlainTextResponse("400 pick one of the personas\n", status_code=400)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(PERSONA_COOKIE, name, httponly=True, samesite="strict")
        return response
    return render(console, request, "personas.html.j2", None, personas=PERSONAS, author=console.config.actor)
