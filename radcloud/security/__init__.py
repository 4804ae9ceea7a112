"""Authentication and roles: tokens, API keys, passwords, and who a request is."""

from radcloud.security.accounts import API_KEY_PREFIX, Accounts, NewApiKey, UserInfo
from radcloud.security.principal import AuthMethod, Principal
from radcloud.security.tokens import TokenService

__all__ = [
    "API_KEY_PREFIX",
    "Accounts",
    "AuthMethod",
    "NewApiKey",
    "Principal",
    "TokenService",
    "UserInfo",
]
