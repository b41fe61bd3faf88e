"""Helpers every layer may use and that know nothing of zmesh's domain: logging (logs.py:
rate-limited warnings about misbehaving peers, the JSON log format)."""
