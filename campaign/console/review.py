"""`GET /campaigns/{slug}/review`: the review packet an approver signs off (placeholder until the next commit)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from campaign.console.context import Console, guarded
from campaign.console.identity import Identity


@guarded("read")
async def review_page(console: Console, request: Request, who: Identity) -> Response:
    return PlainTextResponse("not yet\n", status_code=501)


@guarded("read")
async def message_page(console: Console, request: Request, who: Identity) -> Response:
    return PlainTextResponse("not yet\n", status_code=501)
