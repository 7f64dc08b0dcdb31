"""What a request does to the database, seen from the engine (no tests here): every statement, each
transaction begin and commit, and whether the process writer lock (mdm/extensions.py) was held."""
from __future__ import annotations

import threading

from sqlalchemy import event

from mdm.extensions import db


class Recorder:
    """Every statement, transaction begin and commit on the app's engine made by the request under test
    (the test's own thread: the test client runs the request in it; background work such as the push
    sender is not the request's), and whether the writer lock was held while a statement ran."""

    def __init__(self, app):
        self.thread = threading.get_ident()
        with app.app_context():
            self.engine = db.engine
        self.statements: list[str] = []
        self.begins = 0
        self.commits = 0
        self.locked_statements = 0
        event.listen(self.engine, "before_cursor_execute", self._statement)
        event.listen(self.engine, "begin", self._begin)
        event.listen(self.engine, "commit", self._commit)

    def _statement(self, conn, cursor, statement, parameters, context, executemany):
        if threading.get_ident() != self.thread:
            return
        self.statements.append(statement.strip().split()[0].upper() + " " + statement.strip()[:80])
        if conn.info.get("mdm_writer_lock") is not None:
            self.locked_statements += 1

    def reset(self):
        self.statements.clear()
        self.begins = self.commits = self.locked_statements = 0

    def _begin(self, conn):
        if threading.get_ident() == self.thread:
            self.begins += 1

    def _commit(self, conn):
        if threading.get_ident() == self.thread:
            self.commits += 1

    def writes(self) -> list[str]:
        return [s for s in self.statements
                if s.split()[0] in ("INSERT", "UPDATE", "DELETE") or "IMMEDIATE" in s.upper()]

    def close(self):
        event.remove(self.engine, "before_cursor_execute", self._statement)
        event.remove(self.engine, "begin", self._begin)
        event.remove(self.engine, "commit", self._commit)
