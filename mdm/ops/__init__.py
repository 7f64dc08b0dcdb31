"""The ops room: what an operator runs and reads.

  bootstrap.py  first-run set-up (database, PKI, push identity), shared by ``flask mdm init`` and run;
  dbsetup.py    bring the schema up to date (Alembic);
  backup.py     ``flask mdm backup`` / ``flask mdm restore``;
  logs.py       text or JSON logs, request context, redaction.
"""
