"""Outgoing email: the ``Mailer`` protocol and ``send_email``.

MAILER picks the transport: ``console`` logs each message (development), ``memory`` keeps
them in ``MemoryMailer.outbox`` (tests, and a place to look in development), ``smtp``
sends through SMTP_HOST with STARTTLS (smtplib, in a worker thread).

``send_email`` never sends inside the request: it hands the message to the process's
outbox, a bounded in-memory queue drained by one task started in the app lifespan, so a
slow mail server never slows a response. Given ``conn``, the message is queued only once
the caller's ``db.transaction()`` commits — no email about an account that was never
created. The outbox is in memory: messages queued when the process dies are lost, and a
failed send is logged, not retried. The job queue replaces it behind the same function.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol

from app.config import Settings
from app.db import Connection

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    to: str
    subject: str
    body: str


class Mailer(Protocol):
    async def send(self, message: Message) -> None: ...


class ConsoleMailer:
    async def send(self, message: Message) -> None:
        log.info("email to %s: %s\n%s", message.to, message.subject, message.body)


class MemoryMailer:
    """Keeps messages in a process-wide outbox."""

    outbox: list[Message] = []  # noqa: RUF012 - shared on purpose: one outbox per process

    async def send(self, message: Message) -> None:
        MemoryMailer.outbox.append(message)


class SMTPMailer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def send(self, message: Message) -> None:
        await asyncio.to_thread(self._send, message)

    def _send(self, message: Message) -> None:
        settings = self.settings
        email = EmailMessage()
        email["From"] = settings.mail_from
        email["To"] = message.to
        email["Subject"] = message.subject
        email.set_content(message.body)
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=30) as smtp:
            if settings.smtp_starttls:
                smtp.starttls()
            if settings.smtp_username and settings.smtp_password:
                smtp.login(settings.smtp_username, settings.smtp_password.get_secret_value())
            smtp.send_message(email)


class Outbox:
    """Queue + one sending task. ``start()``/``stop()`` from the app lifespan."""

    def __init__(self, mailer: Mailer, size: int = 1_000) -> None:
        self.mailer = mailer
        self._queue: asyncio.Queue[Message] = asyncio.Queue(size)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._drain(), name="mail-outbox")

    async def stop(self, grace: float = 5.0) -> None:
        """Send what is queued (up to ``grace`` seconds), then stop."""
        if self._task is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), grace)
        except TimeoutError:
            log.warning("mail outbox stopped with %d messages unsent", self._queue.qsize())
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def put(self, message: Message) -> None:
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            log.error("mail outbox full; dropped a message to %s", message.to)

    async def _drain(self) -> None:
        while True:
            message = await self._queue.get()
            try:
                await self.mailer.send(message)
            except Exception:
                log.exception("sending email to %s failed", message.to)
            finally:
                self._queue.task_done()


def create_mailer(settings: Settings) -> Mailer:
    if settings.mailer == "smtp":
        return SMTPMailer(settings)
    if settings.mailer == "memory":
        return MemoryMailer()
    return ConsoleMailer()


_outbox: Outbox | None = None


def set_outbox(outbox: Outbox | None) -> None:
    global _outbox
    _outbox = outbox


async def send_email(message: Message, *, conn: Connection | None = None) -> None:
    """Queue ``message``; with ``conn``, only once the caller's transaction commits."""
    outbox = _outbox
    if outbox is None:
        raise RuntimeError("no mail outbox: the app lifespan starts one")
    if conn is not None:
        from app.db import get_database

        db = await get_database()

        async def queue_after_commit() -> None:
            outbox.put(message)

        if db.after_commit(conn, queue_after_commit):
            return
        if conn.is_in_transaction():
            raise RuntimeError("send_email(conn=...) needs the connection of db.transaction()")
    outbox.put(message)
