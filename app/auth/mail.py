"""Outgoing email: the ``Mailer`` protocol and ``send_email``.

MAILER picks the transport: ``console`` logs each message (development), ``memory`` keeps
them in ``MemoryMailer.outbox`` (tests, and a place to look in development), ``smtp``
sends through SMTP_HOST with STARTTLS (smtplib, in a worker thread).

Mail never leaves inside the request: auth enqueues a ``pgfirst.send_email`` job (queue
``mail``, ``mail_jobs``) in the caller's transaction, so a slow mail server never slows a
response, a failed send is retried with backoff (8 attempts), and no email goes out about
an account that was never created.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol

from app.config import Settings
from app.jobs import JobKind

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


def mail_jobs(mailer: Mailer) -> list[JobKind]:
    """The ``pgfirst.send_email`` job, sending through ``mailer``; a failure is retried."""

    async def deliver_email(to: str, subject: str, body: str) -> None:
        await mailer.send(Message(to, subject, body))

    return [JobKind(SEND_EMAIL_JOB, deliver_email, queue="mail", max_attempts=8, timeout=60)]
