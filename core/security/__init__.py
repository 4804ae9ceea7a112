"""Authentication and roles: tokens, API keys, passwords, and who a request is."""

from core.security.accounts import API_KEY_PREFIX, Accounts, NewApiKey, UserInfo
from core.security.credentials import admit_request, authenticate_headers
from core.security.lockout import SignInGuard
from core.security.principal import Actor, AuthMethod, Door, Principal, Purpose
from core.security.tokens import TokenService

__all__ = [
    "API_KEY_PREFIX",
    "Accounts",
    "Actor",
    "AuthMethod",
    "Door",
    "NewApiKey",
    "Principal",
    "Purpose",
    "SignInGuard",
    "TokenService",
    "UserInfo",
    "admit_request",
    "authenticate_headers",
]
