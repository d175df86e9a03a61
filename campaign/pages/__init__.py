"""The HTML pages `campaign` writes — the report (`campaign.evidence.htmlreport`) and the preview gallery
(`campaign.previews.write_gallery`) — from the Jinja2 templates in this folder. The Python side hands them
plain values; the templates do the markup, and every value is escaped by Jinja2's autoescape, nowhere by hand."""

from __future__ import annotations

import functools
from typing import Any

import jinja2


@functools.cache
def environment() -> jinja2.Environment:
    """The pages' one Environment, built on first use: `.html.j2` autoescaped, an undefined name an error."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("campaign", "pages"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=True, default=False),
        undefined=jinja2.StrictUndefined,
        auto_reload=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(template: str, **values: Any) -> str:
    """One page: `template` (a file of this folder) rendered with `values`."""
    return environment().get_template(template).render(**values)
