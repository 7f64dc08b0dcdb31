"""The server room: the production HTTP server (granian and the RSGI bridge, serve.py).
``python -m mdm.run`` (mdm/run.py) starts it."""
