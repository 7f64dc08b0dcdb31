"""One rule for transactions: services flush and audit; the edge commits once.

Edges are where a unit of work starts and ends: a request (``begin_request``/``end_request``, wired by
``create_app``: the request's work commits once before the response leaves, unless it is an error), a
CLI command and a scheduler job (``edge(name)``: commit at the end, roll back on an exception).

A service ends its work with ``finish()``: inside an edge that is a flush (the edge commits); called
with no edge around it (a script, the Python shell, a test calling the service directly) the caller is
its own edge and ``finish()`` commits. So a service never commits under an edge, and nothing is lost
when a service is used on its own.
"""
from __future__ import annotations

import contextlib

from .extensions import db

_KEY = "mdm_edge"


def current_edge() -> str | None:
    """The open edge's name ("request", "job:<id>", "cli:<command>"), or None."""
    return db.session.info.get(_KEY)


def finish() -> None:
    """The end of a service's work: flush under an edge, commit when there is none."""
    if current_edge():
        db.session.flush()
    else:
        db.session.commit()


@contextlib.contextmanager
def edge(name: str):
    """Run a CLI command's or a job's work as one unit: commit once at the end, roll back on an
    exception. Nested edges join the outer one."""
    info = db.session.info
    if info.get(_KEY):
        yield
        return
    info[_KEY] = name
    try:
        yield
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    finally:
        db.session.info.pop(_KEY, None)


def begin_request() -> None:
    db.session.info[_KEY] = "request"


def end_request(response):
    """The request's work commits once, before the response leaves, unless the answer is an error (the
    teardown then rolls it back). Views that committed, the device check-in (mdm/protocol/views.py) and
    ``read_only()`` leave no transaction open, so nothing commits twice."""
    if response.status_code < 400 and db.session().in_transaction():
        db.session.commit()
    return response


def forget_request(_exc=None) -> None:
    db.session.info.pop(_KEY, None)
