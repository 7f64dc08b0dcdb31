"""WSGI entry point: ``wsgi:app``."""
from mdm import create_app

app = create_app()
