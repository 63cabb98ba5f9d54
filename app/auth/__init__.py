"""Auth: email + password accounts, short-lived access tokens, rotating refresh tokens.

- Passwords: argon2id (argon2-cffi) in worker threads with bounded concurrency
  (``passwords.py``); policy: 10+ characters, two character classes, not one of the
  1,000 most common passwords. Hashes are upgraded on login when parameters change.
- Access tokens: HS256 JWTs, 15 minutes, algorithm pinned (``tokens.py``).
- Sessions: opaque refresh tokens stored as SHA-256, rotated on every use, grouped in
  families; a reused token revokes its family (``service.py``).
- Reset and verification: single-use, expiring, hashed tokens sent by email
  (``mail.py``).
- Spent refresh and one-time tokens are deleted a day after they expire, hourly
  (``pruning.py``, job ``pgfirst.prune_tokens`` from ``jobs.token_jobs``).
- Rate limits on signup, login and reset per IP and per email, in an UNLOGGED table or
  Redis (RATE_LIMIT_BACKEND; ``ratelimit.py``).

Routes in ``router.py``; ``dependencies.py`` gives ``CurrentUser`` and ``AdminUser``.
"""
