"""The resources of the open services, for the few module-level functions of the contract.

``enqueue``, ``publish`` and ``cache`` are called from code that holds no services object
(a job handler, a script). Each reads its resource from a ``Current`` slot that only
``app.services.open_services`` fills, and empties again when it closes. Nothing here opens
anything: a call with no services open raises ``ServicesNotOpen``, which says what to do.

Slots stack, so services opened inside others (a test running two instances) restore the
outer ones when they close.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

HINT = (
    "open them first: `async with open_services(): ...` (from app.services import "
    "open_services); inside the app and `app worker` they are already open"
)


class ServicesNotOpen(RuntimeError):
    """A resource was used outside ``open_services()``."""


class Current(Generic[T]):
    """One resource of the innermost open services."""

    __slots__ = ("_stack", "what")

    def __init__(self, what: str) -> None:
        self.what = what
        self._stack: list[T] = []

    def get(self) -> T:
        if not self._stack:
            raise ServicesNotOpen(f"{self.what} used with no services open: {HINT}")
        return self._stack[-1]

    def push(self, value: T) -> Callable[[], None]:
        """Make ``value`` current; returns the function that takes it off again."""
        self._stack.append(value)

        def pop() -> None:
            for index in range(len(self._stack) - 1, -1, -1):
                if self._stack[index] is value:
                    del self._stack[index]
                    return

        return pop

    @property
    def is_set(self) -> bool:
        return bool(self._stack)
