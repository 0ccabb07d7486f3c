"""The witness on PostgreSQL (witness/store_pg.py): the add-checkpoint answers of the spec, and
check + persist atomic under concurrency — conflicting extensions sent at once to two witness
stores on one database (two processes) get exactly one cosignature. Runs where MC_PG_DSN is set."""

from __future__ import annotations

import asyncio

import httpx
from meterchain.contract.cosignature import Cosigner
from meterchain.witness.config import WitnessConfig
from meterchain.witness.http import WitnessApp
from meterchain.witness.store_pg import PgWitnessStore

from tests.support.store import postgres_location
from tests.support.witness import ORIGIN, ToyLog, add_checkpoint_body, origin_hash


async def test_witness_on_postgres_answers_as_the_spec_says_and_cosigns_one_fork() -> None:
    toy = ToyLog()
    toy.append(10)
    cosigner = Cosigner.generate("witness.test/pg")
    async with postgres_location() as dsn:
        stores = [await PgWitnessStore.open(dsn), await PgWitnessStore.open(dsn)]
        apps = [WitnessApp(WitnessConfig(cosigner, dsn, "", 0, "", {ORIGIN: (toy.signer.verifier,)}), s)
                for s in stores]
        clients = [httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://w") for a in apps]
        try:
            post = clients[0].post
            assert (await post("/add-checkpoint", content=toy.request(0))).status_code == 200
            stale = await post("/add-checkpoint", content=toy.request(4))
            assert (stale.status_code, stale.text, stale.headers["content-type"]) == (409, "10\n", "text/x.tlog.size")
            split = toy.fork()
            split.leaves[9] = b"\x09" * 32
            assert (await post("/add-checkpoint", content=add_checkpoint_body(10, [], split.checkpoint()))
                    ).status_code == 422
            assert [(r[1], r[3]) for r in await stores[0].refused(ORIGIN)] == [(10, 409), (10, 422)]
            assert (await clients[1].get(f"/{origin_hash()}/checkpoint")).text.startswith(toy.checkpoint())

            # Eight conflicting extensions of size 10, at once, through both stores: one wins.
            forks = []
            for i in range(8):
                fork = toy.fork()
                fork.append(1 + i % 3, b"fork %d" % i)
                forks.append(fork)
            answers = await asyncio.gather(*(clients[i % 2].post("/add-checkpoint", content=f.request(10))
                                             for i, f in enumerate(forks)))
            winners = [f for f, a in zip(forks, answers, strict=True) if a.status_code == 200]
            assert len(winners) == 1, [a.status_code for a in answers]
            assert {a.status_code for a in answers} == {200, 409}
            held = await stores[1].latest(ORIGIN)
            assert (held.size, held.root) == (len(winners[0].leaves), winners[0].root())
        finally:
            for client in clients:
                await client.aclose()
            for store in stores:
                await store.close()
