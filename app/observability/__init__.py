"""Logs, metrics, health: what an operator sees of the process.

- JSON logs, one object per line, each carrying the request id of the request (or job)
  that wrote it (``logging.py``).
- Prometheus metrics at /metrics: HTTP count and latency by route template and status,
  pool size and use, pool wait (``metrics.py``).
- /healthz (the process answers) and /readyz (database reachable, migrations at head,
  components healthy; details for operators only) (``router.py``, with the database check
  in app/db/readiness.py).
- One ASGI middleware for request ids, access logs, metrics, security headers, the body
  size limit and the one error shape ``{"detail": ...}`` (``middleware.py``, ``errors.py``).
"""
