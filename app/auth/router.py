"""/api/auth routes. Thin: rate limits, status codes and shapes; the rules are in service.py.

Answers never reveal whether an email has an account: signup and password-reset answer
202 with the same body either way (the mailbox owner learns the rest), and a failed login
is a plain 401.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status

from app.auth.passwords import HashingBusy, policy_problem
from app.auth.ratelimit import client_ip
from app.auth.schemas import (
    Accepted,
    Credentials,
    EmailOnly,
    PasswordChange,
    RefreshRequest,
    ResetConfirm,
    TokenPair,
    UserOut,
    VerifyEmail,
)
from app.auth.service import Session
from app.deps import AuthDep, CurrentSession, CurrentUser, ServicesDep
from app.observability.errors import error_responses
from app.services import Services

router = APIRouter(prefix="/api/auth", tags=["auth"])

SIGNUP_ACCEPTED = Accepted(detail="Check your email to confirm your address")
RESET_ACCEPTED = Accepted(detail="If the address has an account, a reset link is on its way")


async def enforce_limits(
    services: Services, request: Request, action: str, email: str | None = None
) -> None:
    """One hit per key (client IP, and email when given); 429 with Retry-After when over."""
    settings = services.settings
    limiter = services.rate_limiter
    window = settings.rate_limit_window_seconds
    checks = [(f"{action}:ip:{client_ip(request, settings.trusted_proxy_header)}", "ip")]
    if email is not None:
        checks.append((f"{action}:email:{email}", "email"))
    for key, kind in checks:
        limit = getattr(settings, f"rate_limit_{action}_per_{kind}")
        verdict = await limiter.hit(key, limit, window)
        if not verdict.allowed:
            raise HTTPException(
                429,
                "Too many attempts; try again later",
                headers={"Retry-After": str(verdict.retry_after)},
            )


def _check_policy(password: str) -> None:
    problem = policy_problem(password)
    if problem:
        raise HTTPException(422, problem)


def _pair(session: Session) -> TokenPair:
    return TokenPair(
        access_token=session.access_token,
        refresh_token=session.refresh_token,
        expires_in=session.expires_in,
    )


def _busy() -> HTTPException:
    return HTTPException(503, "Server busy; try again shortly", headers={"Retry-After": "1"})


@router.post("/signup", status_code=status.HTTP_202_ACCEPTED, responses=error_responses(429, 503))
async def sign_up(body: Credentials, request: Request, services: ServicesDep) -> Accepted:
    await enforce_limits(services, request, "signup", body.email)
    auth = services.auth
    _check_policy(body.password)
    try:
        await auth.signup(body.email, body.password)
    except HashingBusy:
        raise _busy() from None
    return SIGNUP_ACCEPTED


@router.post("/login", responses=error_responses(401, 429, 503))
async def log_in(body: Credentials, request: Request, services: ServicesDep) -> TokenPair:
    await enforce_limits(services, request, "login", body.email)
    auth = services.auth
    try:
        session = await auth.login(body.email, body.password)
    except HashingBusy:
        raise _busy() from None
    if session is None:
        raise HTTPException(401, "Invalid email or password")
    return _pair(session)


@router.post("/refresh", responses=error_responses(401))
async def refresh_session(body: RefreshRequest, auth: AuthDep) -> TokenPair:
    session = await auth.refresh(body.refresh_token)
    if session is None:
        raise HTTPException(401, "Invalid refresh token")
    return _pair(session)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def log_out(session: CurrentSession, auth: AuthDep) -> None:
    user, claims = session
    await auth.logout(user.id, claims.family_id)


@router.post("/logout-all", status_code=status.HTTP_204_NO_CONTENT)
async def log_out_everywhere(user: CurrentUser, auth: AuthDep) -> None:
    await auth.logout_all(user.id)


@router.get("/me")
async def read_me(user: CurrentUser) -> UserOut:
    return UserOut(
        id=user.id,
        email=user.email,
        is_admin=user.is_admin,
        email_verified=user.email_verified_at is not None,
        created_at=user.created_at,
    )


@router.post(
    "/password", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(403, 503)
)
async def change_password(body: PasswordChange, user: CurrentUser, auth: AuthDep) -> None:
    _check_policy(body.new_password)
    try:
        changed = await auth.change_password(user.id, body.current_password, body.new_password)
    except HashingBusy:
        raise _busy() from None
    if not changed:
        raise HTTPException(403, "Current password is wrong")


@router.post(
    "/password-reset", status_code=status.HTTP_202_ACCEPTED, responses=error_responses(429)
)
async def request_password_reset(
    body: EmailOnly, request: Request, services: ServicesDep
) -> Accepted:
    await enforce_limits(services, request, "reset", body.email)
    await services.auth.request_password_reset(body.email)
    return RESET_ACCEPTED


@router.post(
    "/password-reset/confirm",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(400, 503),
)
async def confirm_password_reset(body: ResetConfirm, auth: AuthDep) -> None:
    _check_policy(body.password)
    try:
        done = await auth.confirm_password_reset(body.token, body.password)
    except HashingBusy:
        raise _busy() from None
    if not done:
        raise HTTPException(400, "Invalid or expired token")


@router.post(
    "/verify-email", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(400)
)
async def verify_email(body: VerifyEmail, auth: AuthDep) -> None:
    if not await auth.verify_email(body.token):
        raise HTTPException(400, "Invalid or expired token")
