"""`GET /campaigns/{slug}/report.csv` and `/report.html`: the evidence, streamed from the export's generator as it
reads the ledger (`campaign.evidence.export.stream`), never a file written and read back. The CSV holds every
account's address: support's role; the HTML report is aggregates: any role."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from campaign.console.context import DOCUMENT_CSP, Console, guarded
from campaign.console.identity import Identity
from campaign.evidence import export

_END = object()


async def _stream(console: Console, request: Request, fmt: str, media_type: str, headers: dict[str, str]) -> Response:
    """The first chunk is read before the response starts (an unknown campaign is a 404 page, not a cut stream);
    the rest in the thread pool, one chunk at a time (the generator's read transaction moves between its threads
    only between two chunks, never at once)."""
    chunks: Iterator[str] = export.stream(console.engine, request.path_params["slug"], fmt)
    first = await run_in_threadpool(next, chunks, _END)

    async def body() -> AsyncIterator[str]:
        if first is not _END:
            yield str(first)
        async for chunk in iterate_in_threadpool(chunks):
            yield chunk

    return StreamingResponse(body(), media_type=media_type, headers=headers)


@guarded("report.csv")
async def report_csv(console: Console, request: Request, who: Identity) -> Response:
    slug = request.path_params["slug"]
    return await _stream(console, request, "csv", "text/csv; charset=utf-8",
                         {"Content-Disposition": f'attachment; filename="{slug}-report.csv"'})


@guarded("read")
async def report_html(console: Console, request: Request, who: Identity) -> Response:
    return await _stream(console, request, "html", "text/html; charset=utf-8",
                         {"Content-Security-Policy": DOCUMENT_CSP})
