"""Enrollment: PKI, enrollment profiles, SCEP."""
