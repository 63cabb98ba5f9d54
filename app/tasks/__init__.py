"""The example domain: projects and tasks owned per user (delete it when you clone).

Shows the patterns the rest of your product should follow: ownership enforced in SQL
(``WHERE user_id = $1`` on every statement, a composite foreign key for cross-row
ownership), one query with a JOIN for lists (no N+1), keyset pagination with signed
cursors, and every write announced in its own transaction (activity log + realtime
event). Indexes and plans: docs/tasks.md.
"""
