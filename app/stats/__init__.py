"""Per-user statistics from the ``user_stats`` materialized view (``service.py``).

Part of the example domain: a cloner replaces it with their own aggregates.
"""
