"""Household sign-in rules (pure code): password hashing, secret tokens, lifetimes.

Passwords are hashed with Argon2id through ``pwdlib`` (argon2-cffi underneath) and checked in a
worker thread by the caller, because one hash costs ~90 ms of CPU. Session cookies and the
one-time invitation and reset links are 256-bit random tokens; the store keeps only their SHA-256
(a fast hash is enough for a token nobody can guess), so a stolen database opens no session.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from meterchain.contract.errors import MeterchainError
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

#: A session ends this long after sign-in, whatever happens ...
SESSION_SECONDS = 7 * 86_400
#: ... and earlier when unused for this long.
SESSION_IDLE_SECONDS = 12 * 3_600
INVITE_SECONDS = 7 * 86_400
RESET_SECONDS = 86_400
PASSWORD_MIN = 10
PASSWORD_MAX = 256
USERNAME_PATTERN = r"^[a-z0-9][a-z0-9._@+-]{2,63}$"
_USERNAME = re.compile(USERNAME_PATTERN)

_HASHER = PasswordHash((Argon2Hasher(),))
#: Verified against when the username is unknown, so a miss costs as much time as a wrong password.
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


class AccountError(MeterchainError):
    """A sign-in, invitation or reset was refused; the message is safe to show the user."""

    check = "account"


@dataclass(frozen=True, slots=True)
class Login:
    username: str
    household: str
    password_hash: str | None  # None until an invitation is accepted


def check_username(value: str) -> str:
    name = value.strip().lower()
    if not _USERNAME.fullmatch(name):
        raise AccountError("a user name is 3 to 64 characters: lower-case letters, digits and "
                           ". _ @ + -, starting with a letter or digit", field="username")
    return name


def check_password(value: str, repeat: str | None = None) -> str:
    if not PASSWORD_MIN <= len(value) <= PASSWORD_MAX:
        raise AccountError(f"a password has {PASSWORD_MIN} to {PASSWORD_MAX} characters",
                           field="password")
    if repeat is not None and repeat != value:
        raise AccountError("the two passwords differ", field="password")
    return value


def hash_password(password: str) -> str:
    """An Argon2id PHC string (salt and parameters inside); CPU-bound, run it in a thread."""
    return _HASHER.hash(password)


def verify_password(password: str, stored: str | None) -> tuple[bool, str | None]:
    """(matches, a rehash when the parameters changed); constant work for unknown users."""
    if stored is None:
        _HASHER.verify(password, _DUMMY_HASH)
        return False, None
    try:
        return _HASHER.verify_and_update(password, stored)
    except Exception:  # noqa: BLE001 - a malformed stored hash authenticates nobody
        return False, None


def new_secret() -> str:
    """A session or link token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def secret_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
