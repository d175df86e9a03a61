"""`campaign serve`: the console, a web page over the same database and core as these commands."""

from __future__ import annotations

import dataclasses

import click

from campaign.cli.app import App, pass_app
from campaign.config import IDENTITIES


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="The port.")
@click.option("--identity", type=click.Choice(IDENTITIES), help="How people are proven [default: [console] identity "
              "in campaign.toml, else jwt]. demo: pick a persona; only on a loopback address.")
@pass_app
def serve(app: App, host: str, port: int, identity: str | None) -> None:
    """The console: campaigns, their review packet, approvals, pause and resume, one person's story, the evidence,
    /metrics and /healthz. Each person is proven by the JWT of an identity-aware proxy ([console] in campaign.toml,
    docs/console.md) and may do what [console.roles] grants. Mail providers post what they saw (delivered,
    bounced, complained) to POST /events/PROVIDER, each proven by its own signature ([providers.NAME] in
    campaign.toml, docs/providers.md)."""
    # Loaded when the console starts, not by every command: uvicorn, Starlette, PyJWT and prometheus-client are
    # needed by no other command, and `campaign` starts for each step of the scheduler. (No circle behind it:
    # campaign.console imports nothing of the command line.)
    import uvicorn

    from campaign.console.app import check, create_app

    config = app.config
    if identity is not None:
        config = dataclasses.replace(config, console=dataclasses.replace(config.console, identity=identity))
    check(config, host)
    asgi = create_app(config, app.engine())
    click.echo(f"campaign console on http://{host}:{port}/ (identity: {config.console.identity}); Ctrl-C stops it",
               err=True)
    # No access log: a request line carries /people?q=EMAIL, a person's address; the console logs refusals itself.
    uvicorn.run(asgi, host=host, port=port, log_level="info", access_log=False, server_header=False,
                limit_concurrency=200, timeout_keep_alive=5)


COMMANDS = (serve,)
