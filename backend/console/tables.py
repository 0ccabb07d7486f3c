"""The console's accounts, sessions and invitations (migration 14), apart from households' logins.

Same care as household sign-in (``web/accounts.py``): Argon2id password hashes, tokens stored as
SHA-256 only, sessions with an absolute and an idle expiry, one-time invitation links. On top, a
TOTP second factor (RFC 6238 via pyotp): a code is accepted once (the last used time step is kept),
so a code seen over a shoulder cannot be replayed within its 30 seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import pyotp
from meterchain.backend.access.model import KeyKind, Principal, Scope
from meterchain.backend.store.tables import SqliteTables
from meterchain.backend.web.accounts import AccountError, new_secret, secret_hash

#: A console session ends this long after sign-in, whatever happens ...
SESSION_SECONDS = 12 * 3_600
#: ... and earlier when unused for this long.
SESSION_IDLE_SECONDS = 30 * 60
INVITE_SECONDS = 3 * 86_400
ISSUER = "meterchain console"
Role = Literal["operator", "auditor"]
ROLES: tuple[Role, ...] = ("operator", "auditor")
_SCOPE = re.compile(r"^(all|utility:[A-Za-z0-9][A-Za-z0-9._:-]{0,63})$")


def check_scope(scope: str) -> str:
    """``all`` (the backend's operator: every utility and household) or ``utility:<id>``."""
    if not _SCOPE.fullmatch(scope):
        raise AccountError("a console scope is 'all' or 'utility:<id>'", field="scope")
    return scope


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise AccountError("a console role is 'operator' (may act) or 'auditor' (reads only)",
                           field="role")
    return role


@dataclass(frozen=True, slots=True)
class Account:
    username: str
    role: Role
    scope: str
    password_hash: str
    totp_secret: str

    @property
    def may_act(self) -> bool:
        """Auditors read; only operators change anything."""
        return self.role == "operator"

    @property
    def everything(self) -> bool:
        return self.scope == "all"

    @property
    def utility(self) -> str | None:
        return self.scope.split(":", 1)[1] if self.scope.startswith("utility:") else None

    def principal(self) -> Principal:
        """The API principal whose view the console shows: the root for 'all', else the utility."""
        if self.everything:
            return Principal.root()
        assert self.utility is not None
        return Principal(KeyKind.UTILITY, self.utility, frozenset({Scope.READ}))


@dataclass(frozen=True, slots=True)
class Invitation:
    role: Role
    scope: str
    expires: int


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    account: Account
    expires: int


def totp_uri(secret: str, username: str) -> str:
    """The otpauth:// URI an authenticator app reads from the QR code."""
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=ISSUER)


def totp_step(secret: str, code: str, now: int) -> int | None:
    """The time step ``code`` is valid for at ``now`` (one step of clock skew either way), or None."""
    code = code.strip().replace(" ", "")
    if not re.fullmatch(r"\d{6}", code):
        return None
    totp = pyotp.TOTP(secret)
    for drift in (0, -1, 1):
        step = now // totp.interval + drift
        if totp.at(step * totp.interval) == code:
            return step
    return None


_ACCOUNT = "username, role, scope, password_hash, totp_secret"


class ConsoleTables(SqliteTables):
    """Queries of the console over one store's connection; each write one short transaction."""

    async def account(self, username: str) -> Account | None:
        rows = await self._rows(f"SELECT {_ACCOUNT} FROM console_accounts WHERE username = ?",
                                (username,))
        return Account(*rows[0]) if rows else None

    async def accounts(self) -> list[Account]:
        return [Account(*r) for r in await self._rows(
            f"SELECT {_ACCOUNT} FROM console_accounts ORDER BY username")]

    async def invite(self, role: str, scope: str, now: int) -> tuple[str, Invitation]:
        """A one-time invitation token (shown once) to create an account of ``role`` over ``scope``."""
        invitation = Invitation(check_role(role), check_scope(scope), now + INVITE_SECONDS)
        token = new_secret()
        await self._transaction(lambda: self._db.execute(
            "INSERT INTO console_invitations (token_hash, role, scope, created, expires) "
            "VALUES (?, ?, ?, ?, ?)", (secret_hash(token), invitation.role, invitation.scope, now,
                                       invitation.expires)))
        return token, invitation

    async def invitation(self, token: str, now: int) -> Invitation | None:
        rows = await self._rows(
            "SELECT role, scope, expires FROM console_invitations WHERE token_hash = ? "
            "AND used_at IS NULL AND expires > ?", (secret_hash(token), now))
        return Invitation(*rows[0]) if rows else None

    async def accept(self, token: str, username: str, password_hash: str, totp_secret: str,
                     step: int, now: int) -> Account:
        """Redeem an invitation: the account, with the TOTP step just proven marked used."""

        async def work() -> Account:
            cur = await self._db.execute(
                "UPDATE console_invitations SET used_at = ?, used_by = ? WHERE token_hash = ? "
                "AND used_at IS NULL AND expires > ?", (now, username, secret_hash(token), now))
            if cur.rowcount != 1:
                raise AccountError("this invitation has expired or was used already; ask for a new one")
            if await self.account(username) is not None:
                raise AccountError("this user name is taken; choose another", field="username")
            role, scope = (await self._rows(
                "SELECT role, scope FROM console_invitations WHERE token_hash = ?",
                (secret_hash(token),)))[0]
            await self._db.execute(
                "INSERT INTO console_accounts (username, role, scope, password_hash, totp_secret, "
                "totp_last_step, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (username, role, scope, password_hash, totp_secret, step, now))
            return Account(username, role, scope, password_hash, totp_secret)

        return await self._transaction(work)

    async def use_totp_step(self, username: str, step: int) -> bool:
        """Mark ``step`` used; False if it (or a later one) was used already: no code twice."""
        async def work() -> bool:
            cur = await self._db.execute(
                "UPDATE console_accounts SET totp_last_step = ? WHERE username = ? "
                "AND totp_last_step < ?", (step, username, step))
            return bool(cur.rowcount == 1)

        return await self._transaction(work)

    async def create_session(self, username: str, now: int) -> str:
        token = new_secret()

        async def work() -> None:
            await self._db.execute(
                "DELETE FROM console_sessions WHERE expires <= ? OR idle_expires <= ?", (now, now))
            await self._db.execute(
                "INSERT INTO console_sessions (token_hash, username, created, expires, idle_expires) "
                "VALUES (?, ?, ?, ?, ?)", (secret_hash(token), username, now, now + SESSION_SECONDS,
                                           now + SESSION_IDLE_SECONDS))

        await self._transaction(work)
        return token

    async def session(self, token: str, now: int) -> ConsoleSession | None:
        rows = await self._rows(
            f"SELECT {', '.join('a.' + c for c in _ACCOUNT.split(', '))}, "
            "min(s.expires, s.idle_expires) FROM console_sessions s "
            "JOIN console_accounts a ON a.username = s.username "
            "WHERE s.token_hash = ? AND s.expires > ? AND s.idle_expires > ?",
            (secret_hash(token), now, now))
        return ConsoleSession(Account(*rows[0][:5]), rows[0][5]) if rows else None

    async def touch_session(self, token: str, now: int) -> None:
        await self._transaction(lambda: self._db.execute(
            "UPDATE console_sessions SET idle_expires = min(expires, ?) WHERE token_hash = ? "
            "AND idle_expires < ?",
            (now + SESSION_IDLE_SECONDS, secret_hash(token), now + SESSION_IDLE_SECONDS - 60)))

    async def end_session(self, token: str) -> None:
        await self._transaction(lambda: self._db.execute(
            "DELETE FROM console_sessions WHERE token_hash = ?", (secret_hash(token),)))
