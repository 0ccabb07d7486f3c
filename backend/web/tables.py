"""The household dashboard's tables (logins, sessions, one-time links, time zones) over the store's
connection. Tokens are looked up by SHA-256 only (``web/accounts.py``); each write is one short
IMMEDIATE transaction, so a link can be redeemed once even by two concurrent requests.
"""

from __future__ import annotations

from dataclasses import dataclass

from meterchain.backend.store.tables import SqliteTables
from meterchain.backend.web.accounts import (
    INVITE_SECONDS,
    RESET_SECONDS,
    SESSION_IDLE_SECONDS,
    SESSION_SECONDS,
    AccountError,
    Login,
    new_secret,
    secret_hash,
)

DEFAULT_TIMEZONE = "Europe/Berlin"


@dataclass(frozen=True, slots=True)
class Session:
    username: str
    household: str
    expires: int


@dataclass(frozen=True, slots=True)
class Link:
    kind: str  # "invite" or "reset"
    household: str
    username: str | None
    expires: int


class WebTables(SqliteTables):
    """Queries of the dashboard over one store's connection."""

    # ------------------------------------------------------------------ logins

    async def login(self, username: str) -> Login | None:
        rows = await self._rows(
            "SELECT username, household, password_hash FROM web_logins WHERE username = ?",
            (username,))
        return Login(*rows[0]) if rows else None

    async def logins(self, household: str) -> list[Login]:
        return [Login(*r) for r in await self._rows(
            "SELECT username, household, password_hash FROM web_logins WHERE household = ? "
            "ORDER BY username", (household,))]

    async def set_password_hash(self, username: str, password_hash: str, now: int) -> None:
        """Store a rehash (Argon2 parameters changed); sessions stay."""
        await self._transaction(lambda: self._db.execute(
            "UPDATE web_logins SET password_hash = ?, updated = ? WHERE username = ?",
            (password_hash, now, username)))

    # ------------------------------------------------------------------- links

    async def create_link(self, kind: str, household: str, username: str | None,
                          now: int) -> tuple[str, Link]:
        """A one-time link token (shown once): ``invite`` lets someone create a login for
        ``household``; ``reset`` lets ``username`` choose a new password."""
        if kind not in ("invite", "reset"):
            raise ValueError(kind)
        expires = now + (INVITE_SECONDS if kind == "invite" else RESET_SECONDS)
        token = new_secret()

        async def work() -> None:
            if not await self._rows("SELECT 1 FROM households WHERE id = ?", (household,)):
                raise AccountError(f"no household {household}", household=household)
            if kind == "reset":
                login = await self.login(username or "")
                if login is None or login.household != household:
                    raise AccountError(f"no login {username} of household {household}",
                                       username=username)
            await self._db.execute(
                "INSERT INTO web_links (token_hash, kind, household, username, created, expires) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (secret_hash(token), kind, household, username, now, expires))

        await self._transaction(work)
        return token, Link(kind, household, username, expires)

    async def link(self, token: str, kind: str, now: int) -> Link | None:
        """The link if it is of ``kind``, unused and unexpired; else None."""
        rows = await self._rows(
            "SELECT kind, household, username, expires FROM web_links WHERE token_hash = ? "
            "AND kind = ? AND used_at IS NULL AND expires > ?", (secret_hash(token), kind, now))
        return Link(*rows[0]) if rows else None

    async def _redeem(self, token: str, kind: str, now: int) -> Link:
        cur = await self._db.execute(
            "UPDATE web_links SET used_at = ? WHERE token_hash = ? AND kind = ? "
            "AND used_at IS NULL AND expires > ?", (now, secret_hash(token), kind, now))
        if cur.rowcount != 1:
            raise AccountError("this link has expired or was used already; ask your energy "
                               "community's operator for a new one")
        rows = await self._rows(
            "SELECT kind, household, username, expires FROM web_links WHERE token_hash = ?",
            (secret_hash(token),))
        return Link(*rows[0])

    async def accept_invite(self, token: str, username: str, password_hash: str,
                            now: int) -> Login:
        """Redeem an invitation: a new login for the link's household."""

        async def work() -> Login:
            link = await self._redeem(token, "invite", now)
            if await self.login(username) is not None:
                raise AccountError("this user name is taken; choose another", field="username")
            await self._db.execute(
                "INSERT INTO web_logins (username, household, password_hash, created, updated) "
                "VALUES (?, ?, ?, ?, ?)", (username, link.household, password_hash, now, now))
            return Login(username, link.household, password_hash)

        return await self._transaction(work)

    async def reset_password(self, token: str, password_hash: str, now: int) -> Login:
        """Redeem a reset link: the new password, and every session of that login ends."""

        async def work() -> Login:
            link = await self._redeem(token, "reset", now)
            assert link.username is not None
            await self._db.execute(
                "UPDATE web_logins SET password_hash = ?, updated = ? WHERE username = ?",
                (password_hash, now, link.username))
            await self._db.execute("DELETE FROM web_sessions WHERE username = ?", (link.username,))
            return Login(link.username, link.household, password_hash)

        return await self._transaction(work)

    # ---------------------------------------------------------------- sessions

    async def create_session(self, username: str, now: int) -> str:
        token = new_secret()

        async def work() -> None:
            await self._db.execute("DELETE FROM web_sessions WHERE expires <= ? OR idle_expires <= ?",
                                   (now, now))
            await self._db.execute(
                "INSERT INTO web_sessions (token_hash, username, created, expires, idle_expires) "
                "VALUES (?, ?, ?, ?, ?)", (secret_hash(token), username, now,
                                           now + SESSION_SECONDS, now + SESSION_IDLE_SECONDS))

        await self._transaction(work)
        return token

    async def session(self, token: str, now: int) -> Session | None:
        """The live session of ``token`` (read-only; see :meth:`touch_session`)."""
        rows = await self._rows(
            "SELECT s.username, l.household, min(s.expires, s.idle_expires), s.idle_expires "
            "FROM web_sessions s JOIN web_logins l ON l.username = s.username "
            "WHERE s.token_hash = ? AND s.expires > ? AND s.idle_expires > ?",
            (secret_hash(token), now, now))
        return Session(*rows[0][:3]) if rows else None

    async def touch_session(self, token: str, now: int) -> None:
        """Push the idle expiry forward (called at most once a minute per session)."""
        await self._transaction(lambda: self._db.execute(
            "UPDATE web_sessions SET idle_expires = min(expires, ?) WHERE token_hash = ? "
            "AND idle_expires < ?",
            (now + SESSION_IDLE_SECONDS, secret_hash(token), now + SESSION_IDLE_SECONDS - 60)))

    async def end_session(self, token: str) -> None:
        await self._transaction(lambda: self._db.execute(
            "DELETE FROM web_sessions WHERE token_hash = ?", (secret_hash(token),)))

    # --------------------------------------------------------------- settings

    async def timezone(self, household: str) -> str:
        rows = await self._rows("SELECT timezone FROM household_settings WHERE household = ?",
                                (household,))
        return str(rows[0][0]) if rows else DEFAULT_TIMEZONE

    async def set_timezone(self, household: str, zone: str) -> None:
        async def work() -> None:
            if not await self._rows("SELECT 1 FROM households WHERE id = ?", (household,)):
                raise AccountError(f"no household {household}", household=household)
            await self._db.execute(
                "INSERT INTO household_settings (household, timezone) VALUES (?, ?) "
                "ON CONFLICT (household) DO UPDATE SET timezone = excluded.timezone",
                (household, zone))

        await self._transaction(work)
