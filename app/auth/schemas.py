"""Request and response bodies of /api/auth."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, field_validator

MAX_EMAIL = 254


def normalise_email(value: str) -> str:
    """Trim and lower-case; a light shape check (the real check is the emailed link)."""
    email = value.strip().lower()
    local, _, domain = email.partition("@")
    if not local or "." not in domain or " " in email or len(email) > MAX_EMAIL:
        raise ValueError("not an email address")
    return email


class Credentials(BaseModel):
    email: str = Field(max_length=MAX_EMAIL + 20)
    password: str = Field(max_length=1024)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return normalise_email(value)


class EmailOnly(BaseModel):
    email: str = Field(max_length=MAX_EMAIL + 20)

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return normalise_email(value)


class RefreshRequest(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=200)


class ResetConfirm(BaseModel):
    token: str = Field(min_length=1, max_length=200)
    password: str = Field(max_length=1024)


class VerifyEmail(BaseModel):
    token: str = Field(min_length=1, max_length=200)


class PasswordChange(BaseModel):
    current_password: str = Field(max_length=1024)
    new_password: str = Field(max_length=1024)


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth2 token type
    expires_in: int


class Accepted(BaseModel):
    detail: str


class UserOut(BaseModel):
    id: int
    email: str
    is_admin: bool
    email_verified: bool
    created_at: datetime
