"""The set-based batch of a first flip run (issue 26: `campaign.store.setbased`, taken when the batch's
range holds no change row of the campaign yet) writes exactly what the row-by-row batch (`store.decide`,
`store.apply`) writes: the same change rows (state, note, notice and due instants, flip time, account, stage)
and the same settings, each pointing at its own change row. Property-tested with hypothesis on SQLite and
PostgreSQL over hostile device ids, settings a person changed, devices outside the audience, notices delivered,
bounced or late, `require_notice` and `min_notice` on and off, and batch bounds anywhere; both ways run in the
same transaction, each in a savepoint rolled back after it is read."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, insert, select

from campaign import campaigns
from campaign.models import ACCOUNT, DELIVERY, DEVICE, DEVICE_SETTING, SETTING_CHANGE, WAITING, WAVE
from campaign.store import changes as store
from campaign.store import setbased
from tests.conftest import CliRun
from tests.test_flip import CUTOFF, FROM, SLUG, TO, definition

NOW = CUTOFF + dt.timedelta(hours=1)
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)

# Device ids as an import may carry them: quotes, wildcards, spaces, non-ASCII, digits that sort oddly.
IDS = st.text(alphabet=st.sampled_from("aZ09_%'\" -.:/\\éß漢😀"), min_size=1, max_size=12)
DEVICES = st.lists(st.tuples(
    IDS,
    st.sampled_from([FROM, FROM, FROM, TO, "save_all"]),  # mostly affected; some a person changed
    st.sampled_from(["Echo Show 10", "Echo Show 10", "Echo Dot (4th Gen)", "Other Speaker"]),
    st.sampled_from(["US", "DE", "JP", "FR"]),  # FR: outside the audience's countries
    st.sampled_from([None, "sent", "sent", "bounced"]),  # the account's notice
    st.integers(min_value=0, max_value=40),  # days before the cutoff it went
), min_size=1, max_size=25, unique_by=lambda d: d[0])


def _populate(conn: Connection, campaign_id: int, devices: list[tuple[Any, ...]]) -> None:
    wave = conn.execute(select(WAVE.c.id).where(WAVE.c.campaign_id == campaign_id, WAVE.c.name == "notice")
                        ).scalar_one()
    for i, (device, value, model, country, notice, days) in enumerate(devices):
        account = f"acct-{i}"
        conn.execute(insert(ACCOUNT).values(id=account, email=f"u{i}@example.com", name="U", locale="en-US",
                                            timezone="UTC", country=country, created_at=T0, updated_at=T0))
        conn.execute(insert(DEVICE).values(id=device, account_id=account, name="Room", model=model, created_at=T0,
                                           updated_at=T0))
        conn.execute(insert(DEVICE_SETTING).values(device_id=device, key="voice_recordings", value=value,
                                                   changed_at=T0))
        if notice is not None:
            at = CUTOFF - dt.timedelta(days=days)
            conn.execute(insert(DELIVERY).values(
                campaign_id=campaign_id, wave_id=wave, account_id=account, state=notice, email=f"u{i}@example.com",
                attempts=1, expires_at=CUTOFF, sent_at=at, updated_at=at, message_id=f"<{i}@x>"))


def _state(conn: Connection, campaign_id: int) -> tuple[dict[str, tuple[Any, ...]], dict[str, tuple[Any, ...]]]:
    """The campaign's change rows by device, and every setting with the device its change row belongs to."""
    sc = SETTING_CHANGE
    rows = {r.device_id: (r.state, r.account_id, r.setting, r.from_value, r.to_value, r.actor, r.decided_at,
                          r.notice_at, r.due_at, r.flipped_at, r.note, r.stage)
            for r in conn.execute(select(sc).where(sc.c.campaign_id == campaign_id))}
    owner = select(sc.c.device_id).where(sc.c.id == DEVICE_SETTING.c.change_id).scalar_subquery()
    sets = {r[0]: (r[1], r[2], r[3]) for r in conn.execute(select(
        DEVICE_SETTING.c.device_id, DEVICE_SETTING.c.value, DEVICE_SETTING.c.changed_at, owner))}
    return rows, sets


def _slow(conn: Connection, plan: store.Plan, batch: store.Batch) -> int:
    """The row-by-row batch of a local flip, as `batches.flip_step` runs it for a range already decided."""
    decided = store.decide(conn, plan, batch, NOW)
    going = sorted(device for device, state, _id in decided if state == "changed")
    done = store.apply(conn, plan, going, NOW)
    assert done == len(going)
    waiting = [device for device, state, _id in decided if state == WAITING]
    if plan.definition.min_notice is not None and waiting:
        store.set_due(conn, plan.campaign_id, waiting, plan.definition.min_notice)
    return done


def _fast(conn: Connection, plan: store.Plan, batch: store.Batch) -> int:
    assert setbased.fresh(conn, plan.campaign_id, batch)
    decided = setbased.decide_fresh(conn, plan, batch, NOW)
    done = setbased.apply_fresh(conn, plan, batch, NOW, decided)
    assert done == decided.changed
    if plan.definition.min_notice is not None and decided.waiting:
        store.set_due(conn, plan.campaign_id, decided.waiting, plan.definition.min_notice)
    return done


def test_set_based_batch_writes_what_the_row_by_row_batch_writes(engine: Engine, run_cli: CliRun,
                                                                  tmp_path: Path) -> None:
    result = run_cli("create", str(definition(tmp_path, 'require_notice = true\nmin_notice = "7d"')))
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        c = campaigns.get(conn, SLUG)
        waves = tuple(store.notice_waves(conn, c.id))
    seen = {"fresh": 0, "waiting": 0, "held_back": 0}

    @settings(max_examples=40 if engine.dialect.name == "sqlite" else 25, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(devices=DEVICES, require_notice=st.booleans(), min_notice=st.sampled_from([None, 7, 30]),
           skip=st.integers(min_value=0, max_value=5), limit=st.integers(min_value=1, max_value=30))
    # Every kind of decision at least once, whatever the random examples reach: a notice too recent for
    # min_notice (waiting), none at all (held back), one old enough (changed).
    @example(devices=[("w1", FROM, "Echo Show 10", "US", "sent", 1), ("h1", FROM, "Echo Show 10", "US", None, 0),
                      ("c1", FROM, "Echo Show 10", "US", "sent", 30)],
             require_notice=True, min_notice=7, skip=0, limit=30)
    def check(devices: list[tuple[Any, ...]], require_notice: bool, min_notice: int | None, skip: int,
              limit: int) -> None:
        d = dataclasses.replace(c.definition, min_notice=None if min_notice is None else dt.timedelta(days=min_notice))
        plan = store.Plan(c.id, d, "tester", require_notice, waves)
        with engine.connect() as conn:
            trans = conn.begin()  # rolled back whatever happens: every example starts from the same database
            try:
                _populate(conn, c.id, devices)
                ordered = sorted(conn.execute(select(DEVICE_SETTING.c.device_id)).scalars())
                after = ordered[skip - 1] if 0 < skip <= len(ordered) else None
                batch = store.next_batch(conn, plan, after, limit)
                if batch is None:
                    return
                outcomes = []
                for way in (_slow, _fast):
                    savepoint = conn.begin_nested()
                    done = way(conn, plan, batch)
                    outcomes.append((done, _state(conn, c.id)))
                    savepoint.rollback()
                assert outcomes[0] == outcomes[1]
                states = [row[0] for row in outcomes[0][1][0].values()]
                seen["fresh"] += 1
                seen["waiting"] += WAITING in states
                seen["held_back"] += "held_back" in states
            finally:
                trans.rollback()

    check()
    # the examples reached every kind of decision, not only the plain switch
    assert seen["fresh"] >= 10 and seen["waiting"] and seen["held_back"], seen


def test_a_later_run_goes_row_by_row_and_switches_nothing_twice(engine: Engine, run_cli: CliRun,
                                                                 tmp_path: Path) -> None:
    """A range that already holds the campaign's change rows (a run after a first one) is not `fresh`: a device
    decided for good whose owner set it back to `from` is left alone, as G6 wants."""
    result = run_cli("create", str(definition(tmp_path, "require_notice = false")))
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        c = campaigns.get(conn, SLUG)
    plan = store.Plan(c.id, c.definition, "tester", False, ())
    with engine.connect() as conn, conn.begin():
        _populate(conn, c.id, [(f"dev-{i}", FROM, "Echo Show 10", "US", None, 0) for i in range(6)])
        batch = store.next_batch(conn, plan, None, 10)
        assert batch is not None and setbased.fresh(conn, c.id, batch)
        assert _fast(conn, plan, batch) == 6
        conn.execute(DEVICE_SETTING.update().where(DEVICE_SETTING.c.device_id == "dev-3")
                     .values(value=FROM, change_id=None))  # its owner set it back, as an import does
        again = store.next_batch(conn, plan, None, 10)
        assert again is not None and (again.first, again.last) == ("dev-3", "dev-3")
        assert not setbased.fresh(conn, c.id, again)
        assert store.decide(conn, plan, again, NOW) == []  # decided for good: not written again, not switched
        rows, sets = _state(conn, c.id)
        assert sets["dev-3"] == (FROM, sets["dev-3"][1], None) and rows["dev-3"][0] == "changed"
