"""What each person may do in the console. A role grants its own actions only — an approver cannot pause unless
also an operator — and every role may read the campaign pages. The forms show only what the viewer may do, and
every POST asks again."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from campaign.config import GROUP, ROLES
from campaign.console.identity import Identity

# action -> the role it needs
ACTIONS = {"read": None, "pause": "operator", "resume": "operator", "approve": "approver", "revoke": "approver",
           "people": "support", "report.csv": "support"}

# Demo mode: each persona's roles (the author holds every role but support, so that it sees the approval refused
# as the author of the definition, not for a missing role).
DEMO_ROLES = {"author": frozenset({"viewer", "operator", "approver"}), "approver": frozenset({"viewer", "approver"}),
              "operator": frozenset({"viewer", "operator"}), "viewer": frozenset({"viewer"}),
              "support": frozenset({"viewer", "support"})}


@dataclass(frozen=True)
class Roles:
    """[console.roles]: per role its members, emails (lower-cased) or `group:NAME`."""

    members: Mapping[str, tuple[str, ...]]
    demo: bool = False

    def of(self, who: Identity) -> frozenset[str]:
        """The roles `who` holds."""
        if self.demo:
            return DEMO_ROLES.get(who.persona or "", frozenset())
        mine = {who.email.lower(), *(GROUP + g for g in who.groups)}
        return frozenset(role for role in ROLES if mine & set(self.members.get(role, ())))

    def may(self, who: Identity, action: str) -> bool:
        """Whether `who` may `action` (KeyError for an action nobody defined: a typo must not grant)."""
        needed = ACTIONS[action]
        held = self.of(who)
        return bool(held) if needed is None else needed in held
