"""A device request refused, and proven to have changed nothing (no tests here).

``assert_refused`` is the one check for every device-facing refusal: the status (never 401: the device
would unenroll; never 5xx), the reason in the answer, the tables as they were, and, when asked, the
audit record and the log lines. ``stored_counts`` counts what a device request may write.
"""
from __future__ import annotations

import logging

from mdm.ddm.state_models import DeclarationSet, DeviceStatus, StatusReport
from mdm.models import (AuditEvent, Command, Device, DeviceCertificate, EnrollmentToken, IssuedCertificate,
                        ScepChallenge)

# what a device request may write to, by the name a test counts it under
TABLES = {"devices": Device, "bindings": DeviceCertificate, "commands": Command, "issued": IssuedCertificate,
          "enrollment_tokens": EnrollmentToken, "statuses": DeviceStatus, "status_reports": StatusReport,
          "declaration_sets": DeclarationSet, "scep_challenges": ScepChallenge}
# what an enrolled device's MDM requests (check-in, command results, DDM) may write to
MDM_TABLES = ("devices", "bindings", "commands", "issued", "enrollment_tokens", "statuses", "status_reports",
              "declaration_sets")
NOTHING_STORED = {"devices": 0, "bindings": 0, "commands": 0}
CATCH_ALL = "could not process the message"


def stored_counts(app, *tables: str) -> dict:
    """Rows per table (``TABLES``' names; devices, bindings and commands when none are named)."""
    with app.app_context():
        return {name: TABLES[name].query.count() for name in tables or NOTHING_STORED}


def every_table(app) -> dict:
    """Every table a device's MDM request may write to (hostile input stores nothing anywhere)."""
    return stored_counts(app, *MDM_TABLES)


def auth_failures(app) -> list[AuditEvent]:
    with app.app_context():
        return AuditEvent.query.filter_by(action="device.auth_failed").all()


def assert_refused(app, response, status: int, reason: str | None = None, before: dict | None = None,
                   caplog=None, *, audited: bool = False, secret: str | None = None) -> None:
    """``response`` is ``status`` (never 401, never 5xx) with ``reason`` in its body, and the tables named
    in ``before`` still hold what it says (``stored_counts`` taken before the request, or
    ``NOTHING_STORED``). ``audited``: the last ``device.auth_failed`` record names the reason, from the
    device at 127.0.0.1. ``caplog``: a log line names the reason and the status, with no catch-all, no
    traceback and nothing at ERROR; ``secret`` (a signature, a token) is in no log line."""
    assert response.status_code == status, response.data[:300]
    assert response.status_code != 401 and response.status_code < 500
    if reason is not None:
        assert reason in response.get_data(as_text=True)
    if before is not None:
        assert stored_counts(app, *before) == before
    if audited:
        failures = auth_failures(app)
        assert failures and reason in failures[-1].detail
        assert failures[-1].actor == "device" and failures[-1].source == "127.0.0.1"
    if caplog is not None:
        messages = [record.getMessage() for record in caplog.records]
        assert any(reason in m and str(status) in m for m in messages), messages
        assert not any(CATCH_ALL in m for m in messages), messages
        assert not any(record.exc_info for record in caplog.records), "a traceback was logged"
        assert not any(record.levelno >= logging.ERROR for record in caplog.records)
        if secret:
            assert not any(secret in m for m in messages)
