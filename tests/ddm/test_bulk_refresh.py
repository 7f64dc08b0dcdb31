"""The bulk recomputation (mdm/ddm/spine.py) against the one-device paths: devices that share one declaration
set each get exactly their own stored set, token, command and push, after a first run and after an edit
that splits them; the results it stores without reading back what it has just queued and pushed are the
ones the one-device path computes by reading them; ``bulk.insert_rows`` stores what ``session.execute``
stores."""
from __future__ import annotations

import datetime as dt
import json
import plistlib
import time
import uuid

import pytest
from sqlalchemy import insert, select

from apps import FEEDS
from mdm.bulk import insert_rows
from mdm.ddm import catalog, results, spine, sync
from mdm.ddm.models import PolicyBinding
from mdm.ddm.plan import recompute
from mdm.ddm.policies import create_policy
from mdm.ddm.state_models import DeclarationSet, PolicyResult
from mdm.extensions import db
from mdm.models import Command, Device, DeviceGroup, PushRequest, group_members
from mdm.push import apns as push

FEED_2024 = json.loads((FEEDS / "gdmf-pmv-2024-09-20-sample.json").read_text())
NOW = dt.datetime(2024, 9, 20, 12)


@pytest.fixture
def ctx(app):
    with app.app_context():
        catalog.apply_feed(FEED_2024, "test-feed", now=NOW)
        yield app
        push.shutdown(app)


def ring_of_phones(n: int) -> list[Device]:
    """``n`` identical enrolled iPhones in one group bound to an enforcing policy, written as the bench
    writes a fleet (nothing computed for them yet: the next recomputation is their first)."""
    policy = create_policy({"name": "Ring", "enforce": True, "grace_days": 7, "local_time": "09:00"})
    group = DeviceGroup(name="Ring")
    db.session.add(group)
    db.session.flush()
    db.session.add(PolicyBinding(policy_id=policy.id, group_id=group.id))
    db.session.execute(insert(Device.__table__), [
        {"udid": f"PHONE-{i}", "serial_number": f"SN-{i}", "product_name": "iPhone15,2", "os_version": "17.5.1",
         "is_supervised": True, "enrollment_status": "enrolled", "push_token_invalid": False, "inventory": {},
         "created_at": NOW} for i in range(n)])
    phones = Device.query.order_by(Device.id).all()
    db.session.execute(insert(group_members), [{"group_id": group.id, "device_id": p.id} for p in phones])
    db.session.commit()
    assert DeclarationSet.query.count() == 0
    return phones


def queued_sync_commands(device_id: int) -> list[Command]:
    return Command.query.filter_by(device_id=device_id, request_type="DeclarativeManagement",
                                   status="queued").all()


def assert_each_device_has_its_own_set_and_command(phones):
    """What the one-device path (``sync.compute_set``) computes is what is stored, and the queued command
    carries that token, under its own CommandUUID."""
    uuids = set()
    for phone in phones:
        stored = db.session.get(DeclarationSet, phone.id)
        computed = sync.compute_set(phone)
        assert stored.declarations == computed.declarations and stored.declarations_token == computed.token
        [command] = queued_sync_commands(phone.id)
        body = plistlib.loads(command.payload)
        assert body["CommandUUID"] == command.uuid and uuid.UUID(command.uuid).version == 4
        assert command.uuid == command.uuid.upper()
        tokens = json.loads(body["Command"]["Data"])["SyncTokens"]
        assert tokens == sync.sync_tokens(stored)
        uuids.add(command.uuid)
    assert len(uuids) == len(phones)


def assert_results_match_the_one_device_path(device_ids):
    """Recomputed one device at a time (which reads queued commands and push requests back), every stored
    result keeps its state and detail."""
    rows = PolicyResult.query.filter(PolicyResult.device_id.in_(device_ids))
    stored = {r.device_id: (r.state, r.detail) for r in rows}
    assert set(stored) == set(device_ids)
    for device_id in device_ids:
        [again] = results.record_device_results(db.session.get(Device, device_id))
        assert (again.state, again.detail) == stored[device_id]


def wait_until_no_push_pending(timeout: float = 20.0) -> None:
    """The background sender handles what the commit asked for (a ceiling against hangs, not a timing)."""
    deadline = time.monotonic() + timeout
    while db.session.scalar(select(PushRequest.id).where(PushRequest.status == "pending").limit(1)):
        assert time.monotonic() < deadline, "the push sender did not handle the pending pushes"
        db.session.rollback()
        time.sleep(0.05)
    db.session.rollback()


def test_devices_sharing_a_set_each_get_their_own_after_a_first_run_and_after_an_edit_splits_them(ctx):
    phones = ring_of_phones(6)
    ids = [p.id for p in phones]
    assert recompute(now=NOW) == set(ids)
    tokens = {p.id: db.session.get(DeclarationSet, p.id).declarations_token for p in phones}
    assert len(set(tokens.values())) == 1                      # one set, shared by all six
    assert_each_device_has_its_own_set_and_command(phones)
    pushes = db.session.execute(select(PushRequest.device_id)).scalars().all()
    assert sorted(pushes) == sorted(ids)                       # one push request each
    assert_results_match_the_one_device_path(ids)
    db.session.rollback()

    # Two of them move to iOS 18.0: their plan and set change, the other four keep theirs.
    for phone in phones[:2]:
        phone.os_version = "18.0"
    db.session.commit()
    assert recompute(now=NOW) == set(ids[:2])
    after = {p.id: db.session.get(DeclarationSet, p.id).declarations_token for p in phones}
    assert after[ids[0]] == after[ids[1]] != tokens[ids[0]]
    assert all(after[i] == tokens[i] for i in ids[2:])
    assert_each_device_has_its_own_set_and_command(phones)   # the still-queued command rewritten, not piled up
    assert_results_match_the_one_device_path(ids)


def test_results_name_a_push_already_being_retried_and_a_new_one_as_the_one_device_path_does(ctx):
    phones = ring_of_phones(3)
    ids = [p.id for p in phones]
    recompute(now=NOW)
    evening = create_policy({"name": "Evening", "enforce": True, "grace_days": 7, "local_time": "18:00"})
    wait_until_no_push_pending()
    push.shutdown(ctx)              # nothing sends meanwhile: what the refresh reads stays as set up here
    # A gateway that is not Apple's: the placeholder push identity is then no reason by itself.
    ctx.config["APNS_GATEWAY"] = "https://127.0.0.1:9"
    db.session.add(PushRequest(device_id=ids[0], status="pending", attempts=2, last_reason="ServiceUnavailable"))
    # Bound directly, two of them move to a policy with another deadline time: a new set for each.
    db.session.add_all([PolicyBinding(policy_id=evening.id, device_id=i) for i in ids[:2]])
    db.session.flush()
    assert spine.replan(now=NOW) == set(ids[:2])     # not committed: the sender is not woken
    stored = {r.device_id: r.detail for r in PolicyResult.query.filter(PolicyResult.device_id.in_(ids[:2]))}
    won = " (won over: Ring)"
    assert stored[ids[0]] == f"{results.QUEUED}; pushes are failing and being retried: ServiceUnavailable{won}"
    assert stored[ids[1]] == results.QUEUED + won    # a new request, not yet attempted
    assert_results_match_the_one_device_path(ids[:2])
    db.session.rollback()


def test_insert_rows_stores_what_session_execute_stores(ctx):
    phones = ring_of_phones(4)
    shared = [{"Identifier": "x", "ServerToken": "t", "Type": "com.apple.configuration.x", "Payload": {"é": [1]}}]
    at = dt.datetime(2024, 9, 20, 12, 30, 15, 123456)

    def row(phone):
        return {"device_id": phone.id, "declarations_token": "tok", "declarations": shared, "notes": ["a note"],
                "changed_at": at, "restrictions_delay_days": None, "command_token": None,
                "command_queued_at": at}
    table = DeclarationSet.__table__
    db.session.execute(insert(table), [row(p) for p in phones[:2]])
    insert_rows(table, [row(p) for p in phones[2:]])
    raw = db.session.execute(select(table).order_by(table.c.device_id)).all()
    first, second = [tuple(r)[1:] for r in raw[:2]], [tuple(r)[1:] for r in raw[2:]]
    assert first == second
    for p in phones:
        stored = db.session.get(DeclarationSet, p.id)
        assert (stored.declarations, stored.changed_at, stored.notes) == (shared, at, ["a note"])
    db.session.rollback()
