"""Enrollment and SCEP HTTP endpoints (filled by the enrollment work)."""
from flask import Blueprint

bp = Blueprint("enroll", __name__)
