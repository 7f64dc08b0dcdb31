"""Declarative Device Management: declarations, patch policies, the Apple release catalog, deadlines."""
