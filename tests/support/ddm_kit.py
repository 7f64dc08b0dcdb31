"""DDM test kit (no tests here): Apple's packaged release snapshot moved to today, a ring to create, and a
clock the simulator's DDM client can be given and moved."""
from __future__ import annotations

import datetime as dt

from mdm.extensions import db

SNAPSHOT_FETCHED = dt.date(2026, 8, 22)
# a patch policy ring, as the service takes it (mdm.ddm.policies.create_policy)
RING = {"name": "Ring", "deferral_days": 3, "enforce": True, "grace_days": 7, "local_time": "09:00",
        "details_url": "https://it.example.com/ios"}


def load_snapshot_as_of_today() -> None:
    """The packaged snapshot (fetched 2026-08-22) with every date moved as if it were fetched today, as
    feeds/README.md suggests for tests (unshifted, its releases expire). In the caller's app context."""
    from mdm.ddm.catalog import SNAPSHOT_PATH, apply_feed, load_feed_file, shift_feed
    days = (dt.date.today() - SNAPSHOT_FETCHED).days
    apply_feed(shift_feed(load_feed_file(SNAPSHOT_PATH), days), "test: snapshot shifted to today")
    db.session.commit()


class Clock:
    """``clock()`` is ``clock.now``; a test moves it by setting ``now``."""

    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now
