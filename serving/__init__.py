"""Serving: the HTTP API (and, with the serving issue, the Ray Serve app and triage pipeline)."""
