"""Outgoing email: the ``Mailer`` protocol and ``send_email``.

MAILER picks the transport: ``console`` logs each message (development), ``memory`` keeps
them in ``MemoryMailer.outbox`` (tests, and a place to look in development), ``smtp``
sends through SMTP_HOST with STARTTLS (smtplib, in a worker thread).

``send_email`` never sends inside the request: it enqueues a ``pgfirst.send_email`` job
(queue ``mail``), so a slow mail server never slows a response and a failed send is
retried with backoff (8 attempts). Given ``conn``, the job commits or rolls back with the
caller's transaction — no email about an account that was never created.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from typing import Protocol

from app.config import Settings, get_settings
from app.db import Connection
from app.jobs.registry import job

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


def create_mailer(settings: Settings) -> Mailer:
    if settings.mailer == "smtp":
        return SMTPMailer(settings)
    if settings.mailer == "memory":
        return MemoryMailer()
    return ConsoleMailer()


SEND_EMAIL_JOB = "pgfirst.send_email"


async def send_email(message: Message, *, conn: Connection | None = None) -> None:
    """Queue ``message`` as a job; with ``conn`` it commits or rolls back with the caller."""
    from app.jobs import enqueue

    await enqueue(SEND_EMAIL_JOB, asdict(message), conn=conn)


@job(name=SEND_EMAIL_JOB, queue="mail", max_attempts=8, timeout=60)
async def deliver_email(to: str, subject: str, body: str) -> None:
    """The job: send through MAILER; a failure is retried with backoff."""
    await create_mailer(get_settings()).send(Message(to, subject, body))
