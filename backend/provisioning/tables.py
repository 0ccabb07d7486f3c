"""Installer tokens and provisioned gateways in the store (tables of migration 2).

Only a token's SHA-256 is kept: a token is 192 random bits, so a plain hash is enough to make a
stolen database useless for provisioning. A token is claimed (marked used) in its own short
transaction before the device leaf is written, and released again if that fails, so a token is
never used twice and a refused enrolment does not burn it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from meterchain.backend.store.tables import SqliteTables


@dataclass(frozen=True, slots=True)
class TokenRow:
    token_hash: bytes
    scope_kind: str
    scope_id: str
    note: str
    created: int
    expires: int
    used_at: int | None
    used_by: str | None


@dataclass(frozen=True, slots=True)
class GatewayRow:
    device: str
    identity: str
    scope_kind: str
    scope_id: str
    broker_username: str
    broker_password_hash: str
    provisioned: int
    updated: int


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class ProvisioningTables(SqliteTables):
    """Queries over one store's connection; writes are single short transactions."""

    async def add_token(self, row: TokenRow) -> None:
        await self._transaction(lambda: self._db.execute(
            "INSERT INTO installer_tokens VALUES (?, ?, ?, ?, ?, ?, NULL, NULL)",
            (row.token_hash, row.scope_kind, row.scope_id, row.note, row.created, row.expires),
        ))

    async def scope_exists(self, kind: str, ident: str) -> bool:
        """Whether the utility or community is registered (parties, migration 3)."""
        table = {"utility": "utilities", "community": "communities"}[kind]
        async with self._db.execute(f"SELECT 1 FROM {table} WHERE id = ?", (ident,)) as cur:
            return await cur.fetchone() is not None

    async def token(self, token: str) -> TokenRow | None:
        async with self._db.execute(
            "SELECT * FROM installer_tokens WHERE token_hash = ?", (token_hash(token),)
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else TokenRow(*row)

    async def tokens(self) -> list[TokenRow]:
        async with self._db.execute("SELECT * FROM installer_tokens ORDER BY created") as cur:
            return [TokenRow(*row) for row in await cur.fetchall()]

    async def claim_token(self, token: str, device: str, now: int) -> bool:
        """Mark an unexpired, unused token used by ``device``; False if someone else won."""
        cur = await self._db.execute(
            "UPDATE installer_tokens SET used_at = ?, used_by = ? "
            "WHERE token_hash = ? AND used_at IS NULL AND expires > ?",
            (now, device, token_hash(token), now),
        )
        return cur.rowcount == 1

    async def release_token(self, token: str, device: str) -> None:
        """Undo a claim whose provisioning failed (only the claim made for ``device``)."""
        await self._db.execute(
            "UPDATE installer_tokens SET used_at = NULL, used_by = NULL "
            "WHERE token_hash = ? AND used_by = ?",
            (token_hash(token), device),
        )

    async def gateway_by_identity(self, identity: str) -> GatewayRow | None:
        return await self._gateway("identity", identity)

    async def gateway(self, device: str) -> GatewayRow | None:
        return await self._gateway("device", device)

    async def _gateway(self, column: str, value: str) -> GatewayRow | None:
        async with self._db.execute(
            f"SELECT * FROM gateways WHERE {column} = ?", (value,)  # column: one of two literals
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else GatewayRow(*row)

    async def save_gateway(self, row: GatewayRow) -> None:
        """Insert or update a gateway's identity, scope and broker login hash."""
        await self._db.execute(
            "INSERT INTO gateways VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (device) DO UPDATE "
            "SET broker_username = excluded.broker_username, "
            "broker_password_hash = excluded.broker_password_hash, updated = excluded.updated",
            (row.device, row.identity, row.scope_kind, row.scope_id, row.broker_username,
             row.broker_password_hash, row.provisioned, row.updated),
        )

    async def highest_seq(self, device: str) -> int:
        async with self._db.execute(
            "SELECT max(seq) FROM readings WHERE device = ?", (device,)
        ) as cur:
            row = await cur.fetchone()
        return int(row[0] or 0) if row else 0
