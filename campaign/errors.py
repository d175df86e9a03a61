"""The one exception family of the core; the CLI turns each into a message and an exit code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MAX_SHOWN = 20


class CampaignError(Exception):
    """An expected failure: its message tells the user what happened and what to do; its `code` says the same
    to a program (stable, listed in docs/commands.md): with `--json` a failing command prints
    `{"error": {"code": CODE, "message": MESSAGE}}`, and the scheduler decides a step's outcome by it, never
    by the wording of the message."""

    exit_code = 1
    code = "failed"
    printed = False  # its JSON was printed already, with the result it ends (the CLI's `_json_result`)

    def __init__(self, *args: object, code: str | None = None) -> None:
        super().__init__(*args)
        if code is not None:
            self.code = code  # kept in the instance's __dict__: it survives pickling (a worker's error)

    def as_json(self) -> dict[str, str]:
        return {"code": self.code, "message": str(self)}


class UsageError(CampaignError):
    """Bad usage or bad input (exit 2)."""

    exit_code = 2
    code = "usage"


class ConfigError(UsageError):
    """The configuration (options, environment, campaign.toml) is wrong."""


class NotFound(UsageError):
    """A campaign, wave or account named on the command line does not exist."""


class PreflightFailed(UsageError):
    """The preflight found errors (`campaign check`'s codes): the verb refuses, nothing written (exit 2)."""

    code = "preflight"


class StateError(CampaignError):
    """The operation is not allowed in the campaign's present state. Its code says which state when a
    program must tell: EXPIRED, PAUSED, CANCELLED, ROLLED_BACK (final for a scheduled step), FLIP_HALTED (a guard
    of the staged flip tripped: a person decides), else "state"."""

    code = "state"


# The codes of a state that ends a scheduled step for good (the scheduler does not try it again).
EXPIRED, PAUSED, CANCELLED, ROLLED_BACK = "expired", "paused", "cancelled", "rolled_back"
FLIP_HALTED = "flip_halted"  # not tried again by the scheduler either: `campaign resume` or `rollback` decides


@dataclass(frozen=True, order=True)
class Problem:
    """One problem in an input file, located by line (1-based; a header is line 1)."""

    line: int
    message: str


class InputError(UsageError):
    """An input file has problems; none of it was written."""

    def __init__(self, path: str, problems: Sequence[Problem], total: int | None = None) -> None:
        self.path = path
        self.problems = sorted(problems)[:MAX_SHOWN]
        self.total = max(total if total is not None else len(problems), len(self.problems))
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"{self.path}:{p.line}: {p.message}" if p.line else f"{self.path}: {p.message}"
                 for p in self.problems]
        rest = self.total - len(self.problems)
        if rest > 0:
            lines.append(f"... and {rest} more problem{'s' if rest != 1 else ''} in {self.path}")
        lines.append("Nothing was written.")
        return "\n".join(lines)


class TemplateProblem(UsageError):
    """A template does not render; names the template file and line."""


class RenderFailure(TemplateProblem):
    """One message did not render for its recipient's data (an exception while rendering, an empty subject,
    a message above `[limits] max_message_bytes`): that delivery fails; the template itself loads."""
