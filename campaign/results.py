"""What every verb's typed result shares: its `--json` is one method, `as_json()`."""

from __future__ import annotations

import dataclasses
from typing import Any


class Fields:
    """A result (a dataclass) whose JSON is its fields as they are: `dataclasses.asdict`."""

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]
