"""The composer: one recipient's message rendered and built, in wire form, with its Message-ID and (when the
campaign signs its return path) its own envelope sender → an `Envelope`; or why not: `MessageFailed` (this person's
message), `ComposeError` (no message of the wave can be built)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from campaign import verp
from campaign.definition import Definition, WaveDef
from campaign.delivery.envelope import Envelope
from campaign.errors import CampaignError, RenderFailure
from campaign.notices import exact
from campaign.notices.kept import TemplateSet
from campaign.notices.mime import HeaderInjection, MessageTooLarge, message_id
from campaign.notices.proofs import builder_for
from campaign.notices.rendering import Renderer
from campaign.recipients import DeviceView, Recipient
from campaign.store.deliveries import Proof

__all__ = ["ComposeError", "Composed", "Composer", "MessageFailed"]


class ComposeError(Exception):
    """No message of the wave can be built (a template that does not load, a broken sender): it is not sent,
    the wave pauses (G5)."""


class MessageFailed(Exception):
    """This one message could not be built for its recipient (an exception while rendering their data, a
    message above `max_message_bytes`): that delivery is `failed` with the reason; the wave goes on."""


@dataclass(frozen=True)
class Composed:
    envelope: Envelope
    locale: str  # the template locale it was rendered in
    proof: Proof  # what the delivery records to prove the message's words


class Composer:
    """Renders and builds one wave's messages, from `templates` (the template set of the campaign's version)."""

    def __init__(self, definition: Definition, wave: WaveDef, templates: TemplateSet, renderer: Renderer) -> None:
        self.d, self.wave, self.renderer = definition, wave, renderer
        self.builder = builder_for(definition, wave)
        self.sender, self.domain = definition.sender_address, definition.sender_domain  # parsed once
        self.version, self.version_sha256 = templates.version, templates.sha256

    def __call__(self, person: Recipient, devices: tuple[DeviceView, ...], now: dt.datetime) -> Composed:
        try:
            mid = message_id(self.d.slug, self.wave.name, person.account_id, self.domain,
                             verp.message_id_key(self.d))  # keyed when the return path is signed
            inputs = exact.Inputs(now, person, devices)
            rendered, data = exact.build(self.renderer, self.builder, self.wave, inputs, mid)
            sender = verp.envelope_sender(self.d, mid, self.sender)  # [bounces]: a signed return path per delivery
        except (RenderFailure, HeaderInjection, MessageTooLarge) as exc:
            raise MessageFailed(str(exc)) from exc
        except (CampaignError, ValueError) as exc:
            raise ComposeError(str(exc)) from exc
        except Exception as exc:  # whatever else one person's data ran into: that message, not the send
            raise MessageFailed(f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from exc
        # The proof: one digest over bytes already built, the version's digest read once per send.
        proof = Proof(exact.sha256(data), self.version, self.version_sha256, inputs.dumps())
        return Composed(Envelope(sender, (person.email,), data, mid, wire=True), rendered.template_locale, proof)
