"""Device-facing MDM endpoints: check-in and command (filled by the MDM core work)."""
from flask import Blueprint

bp = Blueprint("protocol", __name__)
