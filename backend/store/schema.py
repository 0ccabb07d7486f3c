"""The store's schema as an ordered list of migrations; the database records how far it got.

Never edit a migration that has shipped: append a new one. Each migration runs in the same
transaction as the bump of ``schema_version``, so a crash leaves the schema at a known version.
"""

from __future__ import annotations

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: devices, the log's leaves, readings, keys, evidence, the tree and its seals.
    (
        """CREATE TABLE devices (
            device TEXT PRIMARY KEY,
            created INTEGER NOT NULL
        )""",
        # id = arrival order; leaf_index is assigned by the sealer, NULL until sealed.
        """CREATE TABLE leaves (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL CHECK (kind IN ('reading', 'device', 'settlement')),
            data BLOB NOT NULL,
            leaf_hash BLOB NOT NULL,
            leaf_index INTEGER UNIQUE,
            received_at INTEGER NOT NULL
        )""",
        "CREATE INDEX leaves_pending ON leaves (id) WHERE leaf_index IS NULL",
        """CREATE TABLE readings (
            device TEXT NOT NULL,
            seq INTEGER NOT NULL,
            meter TEXT NOT NULL,
            start INTEGER NOT NULL,
            "end" INTEGER NOT NULL,
            import_wh INTEGER NOT NULL,
            export_wh INTEGER NOT NULL,
            reading_digest BLOB NOT NULL,
            leaf_id INTEGER NOT NULL UNIQUE REFERENCES leaves (id),
            received_at INTEGER NOT NULL,
            PRIMARY KEY (device, seq),
            UNIQUE (device, meter, "end")
        ) WITHOUT ROWID""",
        "CREATE INDEX readings_by_time ON readings (device, \"end\")",
        """CREATE TABLE device_keys (
            leaf_id INTEGER PRIMARY KEY REFERENCES leaves (id),
            device TEXT NOT NULL,
            event TEXT NOT NULL,
            public_key BLOB NOT NULL,
            kid BLOB NOT NULL,
            valid_from INTEGER NOT NULL,
            time INTEGER NOT NULL
        )""",
        "CREATE INDEX device_keys_by_device ON device_keys (device, leaf_id)",
        # Evidence of a conflict: the message that lost, kept verbatim beside the leaf that won.
        """CREATE TABLE conflicts (
            id INTEGER PRIMARY KEY,
            device TEXT NOT NULL,
            seq INTEGER NOT NULL,
            message BLOB NOT NULL,
            kept_leaf_id INTEGER NOT NULL REFERENCES leaves (id),
            time INTEGER NOT NULL
        )""",
        # permanent = rejected for good (reported in the ack); others are logged and counted only.
        """CREATE TABLE rejections (
            id INTEGER PRIMARY KEY,
            device TEXT,
            seq INTEGER,
            reason TEXT NOT NULL,
            detail TEXT NOT NULL,
            permanent INTEGER NOT NULL,
            time INTEGER NOT NULL
        )""",
        "CREATE INDEX rejections_permanent ON rejections (device, seq) WHERE permanent = 1",
        """CREATE TABLE ack_state (
            device TEXT PRIMARY KEY,
            upto INTEGER NOT NULL,
            time INTEGER NOT NULL
        )""",
        """CREATE TABLE log_nodes (
            level INTEGER NOT NULL,
            idx INTEGER NOT NULL,
            hash BLOB NOT NULL,
            PRIMARY KEY (level, idx)
        ) WITHOUT ROWID""",
        """CREATE TABLE checkpoints (
            size INTEGER PRIMARY KEY,
            root BLOB NOT NULL,
            note TEXT NOT NULL,
            time INTEGER NOT NULL
        )""",
        """CREATE TABLE batches (
            idx INTEGER PRIMARY KEY,
            first INTEGER NOT NULL,
            size INTEGER NOT NULL UNIQUE,
            root BLOB NOT NULL,
            sealed INTEGER NOT NULL,
            header BLOB NOT NULL
        )""",
    ),
    # 2: installers: one-time provisioning tokens (only their SHA-256 is kept) and each
    # provisioned gateway's identity, scope and broker login (a Mosquitto PBKDF2 hash, never
    # the password). A scope is (kind, id) text until parties have tables of their own.
    (
        """CREATE TABLE installer_tokens (
            token_hash BLOB PRIMARY KEY,
            scope_kind TEXT NOT NULL CHECK (scope_kind IN ('utility', 'community')),
            scope_id TEXT NOT NULL,
            note TEXT NOT NULL,
            created INTEGER NOT NULL,
            expires INTEGER NOT NULL,
            used_at INTEGER,
            used_by TEXT
        )""",
        """CREATE TABLE gateways (
            device TEXT PRIMARY KEY,
            identity TEXT NOT NULL UNIQUE,
            scope_kind TEXT NOT NULL,
            scope_id TEXT NOT NULL,
            broker_username TEXT NOT NULL,
            broker_password_hash TEXT NOT NULL,
            provisioned INTEGER NOT NULL,
            updated INTEGER NOT NULL
        )""",
    ),
    # 3: parties and scoped access. utility -> community -> household; a metering point is
    # registered to a utility (and maybe a community); meter bindings (device, meter) and
    # occupancies (household) hold a metering point over [valid_from, valid_to), NULL = open.
    # API keys are kept only as SHA-256 of a 256-bit random token. Auditor grants name metering
    # points or communities and expire.
    (
        """CREATE TABLE utilities (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            created INTEGER NOT NULL
        )""",
        """CREATE TABLE communities (
            id TEXT PRIMARY KEY,
            utility TEXT NOT NULL REFERENCES utilities (id),
            name TEXT NOT NULL,
            created INTEGER NOT NULL
        )""",
        """CREATE TABLE households (
            id TEXT PRIMARY KEY,
            community TEXT NOT NULL REFERENCES communities (id),
            name TEXT NOT NULL,
            created INTEGER NOT NULL
        )""",
        """CREATE TABLE metering_points (
            id TEXT PRIMARY KEY,
            utility TEXT NOT NULL REFERENCES utilities (id),
            community TEXT REFERENCES communities (id),
            kind TEXT NOT NULL,
            created INTEGER NOT NULL
        )""",
        "CREATE INDEX metering_points_by_utility ON metering_points (utility)",
        "CREATE INDEX metering_points_by_community ON metering_points (community)",
        """CREATE TABLE meter_bindings (
            id INTEGER PRIMARY KEY,
            metering_point TEXT NOT NULL REFERENCES metering_points (id),
            device TEXT NOT NULL,
            meter TEXT NOT NULL,
            valid_from INTEGER NOT NULL,
            valid_to INTEGER CHECK (valid_to IS NULL OR valid_to > valid_from),
            created INTEGER NOT NULL
        )""",
        "CREATE INDEX meter_bindings_by_meter ON meter_bindings (device, meter, valid_from)",
        "CREATE INDEX meter_bindings_by_point ON meter_bindings (metering_point, valid_from)",
        """CREATE TABLE occupancies (
            id INTEGER PRIMARY KEY,
            metering_point TEXT NOT NULL REFERENCES metering_points (id),
            household TEXT NOT NULL REFERENCES households (id),
            valid_from INTEGER NOT NULL,
            valid_to INTEGER CHECK (valid_to IS NULL OR valid_to > valid_from),
            created INTEGER NOT NULL
        )""",
        "CREATE INDEX occupancies_by_point ON occupancies (metering_point, valid_from)",
        "CREATE INDEX occupancies_by_household ON occupancies (household)",
        """CREATE TABLE grants (
            id TEXT PRIMARY KEY,
            label TEXT NOT NULL,
            expires INTEGER NOT NULL,
            created INTEGER NOT NULL
        )""",
        """CREATE TABLE grant_scopes (
            grant_id TEXT NOT NULL REFERENCES grants (id),
            metering_point TEXT REFERENCES metering_points (id),
            community TEXT REFERENCES communities (id),
            CHECK ((metering_point IS NULL) <> (community IS NULL))
        )""",
        "CREATE INDEX grant_scopes_by_grant ON grant_scopes (grant_id)",
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            token_hash BLOB NOT NULL UNIQUE,
            kind TEXT NOT NULL CHECK (kind IN ('admin', 'utility', 'household', 'auditor')),
            subject TEXT NOT NULL,
            label TEXT NOT NULL,
            created INTEGER NOT NULL,
            expires INTEGER,
            revoked INTEGER,
            last_used INTEGER,
            replaces TEXT
        )""",
    ),
    # 4: the log keeps only the tlog-tiles strata: leaf hashes (level 0, already in `leaves`)
    # and perfect nodes at levels 8, 16, ...; any other node is the fold of at most 128 of
    # them (docs/log.md). Levels 0-7 cost ~90 B per leaf; they are derived data, so drop them.
    ("DELETE FROM log_nodes WHERE level % 8 != 0 OR level = 0",),
    # 5: utilities. OCMF records kept verbatim beside their readings (verified with the device
    # key valid for that seq); each gateway's latest status message and per-meter health; webhooks
    # per utility with their outbox of deliveries (pending -> delivered | dead, replayable).
    (
        """CREATE TABLE ocmf_records (
            device TEXT NOT NULL,
            seq INTEGER NOT NULL,
            meter TEXT NOT NULL,
            "end" INTEGER NOT NULL,
            record BLOB NOT NULL,
            received_at INTEGER NOT NULL,
            PRIMARY KEY (device, seq)
        ) WITHOUT ROWID""",
        'CREATE INDEX ocmf_by_meter ON ocmf_records (device, meter, "end")',
        """CREATE TABLE gateway_status (
            device TEXT PRIMARY KEY,
            last_seen INTEGER NOT NULL,
            sent INTEGER NOT NULL,
            firmware TEXT NOT NULL,
            uptime INTEGER NOT NULL,
            outbox_depth INTEGER NOT NULL,
            quarantined INTEGER NOT NULL,
            message BLOB NOT NULL
        )""",
        """CREATE TABLE gateway_meters (
            device TEXT NOT NULL,
            meter TEXT NOT NULL,
            last_read INTEGER,
            drift INTEGER,
            PRIMARY KEY (device, meter)
        ) WITHOUT ROWID""",
        """CREATE TABLE webhooks (
            id TEXT PRIMARY KEY,
            utility TEXT NOT NULL,
            url TEXT NOT NULL,
            secret TEXT NOT NULL,
            after_batch INTEGER NOT NULL,
            created INTEGER NOT NULL,
            deleted INTEGER
        )""",
        "CREATE INDEX webhooks_by_utility ON webhooks (utility)",
        """CREATE TABLE webhook_deliveries (
            id INTEGER PRIMARY KEY,
            webhook TEXT NOT NULL REFERENCES webhooks (id),
            idempotency_key TEXT NOT NULL,
            event TEXT NOT NULL,
            payload BLOB NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
            attempts INTEGER NOT NULL,
            next_attempt INTEGER NOT NULL,
            last_error TEXT NOT NULL,
            created INTEGER NOT NULL,
            finished INTEGER,
            UNIQUE (webhook, idempotency_key)
        )""",
        "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt) WHERE state = 'pending'",
    ),
    # 6: the household dashboard (backend/web): logins of households (an Argon2id hash, NULL
    # until an invitation is accepted), browser sessions and one-time invitation/reset links
    # (both kept only as SHA-256 of a 256-bit random token), and each household's time zone.
    (
        """CREATE TABLE web_logins (
            username TEXT PRIMARY KEY,
            household TEXT NOT NULL REFERENCES households (id),
            password_hash TEXT,
            created INTEGER NOT NULL,
            updated INTEGER NOT NULL
        )""",
        "CREATE INDEX web_logins_by_household ON web_logins (household)",
        """CREATE TABLE web_sessions (
            token_hash BLOB PRIMARY KEY,
            username TEXT NOT NULL REFERENCES web_logins (username),
            created INTEGER NOT NULL,
            expires INTEGER NOT NULL,
            idle_expires INTEGER NOT NULL
        )""",
        "CREATE INDEX web_sessions_by_username ON web_sessions (username)",
        """CREATE TABLE web_links (
            token_hash BLOB PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('invite', 'reset')),
            household TEXT NOT NULL REFERENCES households (id),
            username TEXT,
            created INTEGER NOT NULL,
            expires INTEGER NOT NULL,
            used_at INTEGER
        )""",
        """CREATE TABLE household_settings (
            household TEXT PRIMARY KEY REFERENCES households (id),
            timezone TEXT NOT NULL
        )""",
    ),
    # 7: netting and settlement (backend/settlement/runner.py, docs/netting.md "Operations"). A
    # community's terms are versioned by valid_from; dynamic prices are [start, end) rows; listings
    # are versioned like bindings. Each settled interval revision keeps the exact input it was
    # settled from (CBOR) beside its digest and its settlement leaf; revision 0 stores member lines,
    # later revisions only delta lines. Readings that cannot be used are reported, never used.
    (
        """CREATE TABLE netting_terms (
            community TEXT NOT NULL REFERENCES communities (id),
            valid_from INTEGER NOT NULL,
            interval_seconds INTEGER NOT NULL,
            deadline_seconds INTEGER NOT NULL,
            timezone TEXT NOT NULL,
            market TEXT NOT NULL CHECK (market IN ('prorata', 'auction')),
            rule TEXT NOT NULL,
            fixed_price INTEGER,
            retail_price INTEGER,
            feed_in_price INTEGER,
            local_network_fee INTEGER NOT NULL,
            grid_network_fee INTEGER NOT NULL,
            platform_fee INTEGER NOT NULL,
            monthly_fee INTEGER NOT NULL,
            vat_basis_points INTEGER NOT NULL,
            co2_grams_per_kwh INTEGER NOT NULL,
            created INTEGER NOT NULL,
            PRIMARY KEY (community, valid_from)
        ) WITHOUT ROWID""",
        """CREATE TABLE netting_prices (
            community TEXT NOT NULL REFERENCES communities (id),
            kind TEXT NOT NULL CHECK (kind IN ('retail', 'feed_in')),
            start INTEGER NOT NULL,
            "end" INTEGER NOT NULL CHECK ("end" > start),
            price INTEGER NOT NULL,
            created INTEGER NOT NULL,
            PRIMARY KEY (community, kind, start)
        ) WITHOUT ROWID""",
        """CREATE TABLE netting_listings (
            id INTEGER PRIMARY KEY,
            community TEXT NOT NULL REFERENCES communities (id),
            member TEXT NOT NULL REFERENCES metering_points (id),
            valid_from INTEGER NOT NULL,
            valid_to INTEGER CHECK (valid_to IS NULL OR valid_to > valid_from),
            buy_limit INTEGER,
            sell_ask INTEGER,
            green_source INTEGER NOT NULL,
            green_only INTEGER NOT NULL,
            partner_group TEXT,
            created INTEGER NOT NULL
        )""",
        "CREATE INDEX netting_listings_by_member ON netting_listings (community, member, valid_from)",
        """CREATE TABLE settlements (
            community TEXT NOT NULL,
            interval_start INTEGER NOT NULL,
            revision INTEGER NOT NULL,
            interval_seconds INTEGER NOT NULL,
            digest BLOB NOT NULL UNIQUE,
            supersedes BLOB,
            leaf_id INTEGER NOT NULL UNIQUE REFERENCES leaves (id),
            reason TEXT NOT NULL,
            settled_at INTEGER NOT NULL,
            input BLOB NOT NULL,
            mode TEXT NOT NULL,
            rule TEXT NOT NULL,
            retail_price INTEGER NOT NULL,
            feed_in_price INTEGER NOT NULL,
            members INTEGER NOT NULL,
            missing INTEGER NOT NULL,
            substituted INTEGER NOT NULL,
            demand_wh INTEGER NOT NULL,
            supply_wh INTEGER NOT NULL,
            local_wh INTEGER NOT NULL,
            grid_import_wh INTEGER NOT NULL,
            grid_export_wh INTEGER NOT NULL,
            self_sufficiency_ppm INTEGER,
            self_consumption_ppm INTEGER,
            co2_avoided_g INTEGER NOT NULL,
            tiers TEXT NOT NULL,
            PRIMARY KEY (community, interval_start, revision)
        ) WITHOUT ROWID""",
        """CREATE TABLE settlement_lines (
            community TEXT NOT NULL,
            interval_start INTEGER NOT NULL,
            revision INTEGER NOT NULL,
            member TEXT NOT NULL,
            is_delta INTEGER NOT NULL,
            quality INTEGER,
            import_wh INTEGER NOT NULL,
            export_wh INTEGER NOT NULL,
            bought_local_wh INTEGER NOT NULL,
            bought_grid_wh INTEGER NOT NULL,
            sold_local_wh INTEGER NOT NULL,
            sold_grid_wh INTEGER NOT NULL,
            local_energy_bought INTEGER NOT NULL,
            local_energy_sold INTEGER NOT NULL,
            grid_energy INTEGER NOT NULL,
            feed_in INTEGER NOT NULL,
            local_network_fee INTEGER NOT NULL,
            grid_network_fee INTEGER NOT NULL,
            platform_fee INTEGER NOT NULL,
            PRIMARY KEY (community, interval_start, revision, member)
        ) WITHOUT ROWID""",
        "CREATE INDEX settlement_lines_by_member ON settlement_lines (member, interval_start)",
        """CREATE TABLE settlement_origin (
            community TEXT NOT NULL,
            interval_start INTEGER NOT NULL,
            revision INTEGER NOT NULL,
            seller TEXT NOT NULL,
            export_wh INTEGER NOT NULL,
            PRIMARY KEY (community, interval_start, revision, seller)
        ) WITHOUT ROWID""",
        """CREATE TABLE settlement_state (
            community TEXT PRIMARY KEY,
            reading_cursor INTEGER NOT NULL,
            settled_upto INTEGER NOT NULL
        )""",
        """CREATE TABLE settlement_exclusions (
            id INTEGER PRIMARY KEY,
            community TEXT NOT NULL,
            member TEXT,
            device TEXT NOT NULL,
            seq INTEGER NOT NULL,
            reason TEXT NOT NULL,
            detail TEXT NOT NULL,
            time INTEGER NOT NULL,
            UNIQUE (community, device, seq, reason)
        )""",
        """CREATE TABLE netting_bills (
            community TEXT NOT NULL,
            member TEXT NOT NULL,
            period_start INTEGER NOT NULL,
            version INTEGER NOT NULL,
            period_end INTEGER NOT NULL,
            issued INTEGER NOT NULL,
            basis BLOB NOT NULL,
            total INTEGER NOT NULL,
            baseline_total INTEGER NOT NULL,
            savings INTEGER NOT NULL,
            co2_avoided_g INTEGER NOT NULL,
            energy TEXT NOT NULL,
            lines TEXT NOT NULL,
            PRIMARY KEY (community, member, period_start, version)
        ) WITHOUT ROWID""",
        "CREATE INDEX netting_bills_by_member ON netting_bills (member, period_start)",
    ),
    # 8: erasure of a household's data (backend/erasure/rules.py, docs/privacy.md). An erasure record
    # keeps who, when, how many leaves and their leaf index ranges, never values. An erased
    # reading keeps only what names its place: (device, seq, meter, end) and its leaf; its row in
    # `readings` goes and its leaf's data becomes empty, while leaf_hash and leaf_index stay.
    (
        """CREATE TABLE erasures (
            id INTEGER PRIMARY KEY,
            household TEXT NOT NULL,
            requested_by TEXT NOT NULL,
            time INTEGER NOT NULL,
            leaves INTEGER NOT NULL,
            ranges TEXT NOT NULL,
            unsealed INTEGER NOT NULL,
            logins INTEGER NOT NULL
        )""",
        "CREATE INDEX erasures_by_household ON erasures (household, time)",
        """CREATE TABLE erased_readings (
            device TEXT NOT NULL,
            seq INTEGER NOT NULL,
            meter TEXT NOT NULL,
            "end" INTEGER NOT NULL,
            leaf_id INTEGER NOT NULL UNIQUE REFERENCES leaves (id),
            erasure INTEGER NOT NULL REFERENCES erasures (id),
            PRIMARY KEY (device, seq)
        ) WITHOUT ROWID""",
        'CREATE INDEX erased_readings_by_meter ON erased_readings (device, meter, "end")',
    ),
    # 9: the log stores every 4th level (4, 8, 12, ...: docs/log.md "Storage"); `log_meta` says
    # which ('stride'). A log sealed before stored levels 8, 16, ... only: it says 8 until the
    # sealer's start-up backfill (backend/log/backfill.py; SQL cannot hash) stored the rest.
    (
        """CREATE TABLE log_meta (
            key TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        ) WITHOUT ROWID""",
        "INSERT INTO log_meta SELECT 'stride', "
        "CASE WHEN EXISTS (SELECT 1 FROM checkpoints) THEN 8 ELSE 4 END",
    ),
    # 10: slimmer readings (issue 5: bytes per reading). The table becomes a rowid table keyed
    # by its leaf (filled in arrival order, so its pages stay full, and no leaf_id index);
    # reading_digest goes (dedupe unpacks the kept leaf's message on a (device, seq) hit),
    # received_at goes (the leaf's own received_at is the same), readings_by_time goes (the
    # unique (device, meter, end) index serves them, one range per meter). Leaf data
    # written from now on is packed (backend/store/leafdata.py); older rows stay raw and read
    # back unchanged, since SQL cannot compress them.
    (
        """CREATE TABLE readings_slim (
            leaf_id INTEGER PRIMARY KEY REFERENCES leaves (id),
            device TEXT NOT NULL,
            seq INTEGER NOT NULL,
            meter TEXT NOT NULL,
            start INTEGER NOT NULL,
            "end" INTEGER NOT NULL,
            import_wh INTEGER NOT NULL,
            export_wh INTEGER NOT NULL,
            UNIQUE (device, seq),
            UNIQUE (device, meter, "end")
        )""",
        'INSERT INTO readings_slim (leaf_id, device, seq, meter, start, "end", import_wh, '
        'export_wh) SELECT leaf_id, device, seq, meter, start, "end", import_wh, export_wh '
        "FROM readings ORDER BY leaf_id",
        "DROP TABLE readings",
        "ALTER TABLE readings_slim RENAME TO readings",
    ),
    # 11: households trade from their dashboard (docs/households.md "Market, conditions, wallet").
    # The wallet is postings only, never a stored balance: the settlement runner posts each
    # settled revision's money lines (members: to the household occupying the metering point at
    # the interval's start, else to the point's own account) and its rounding lines (to the
    # community's account) in the same transaction as the revision; issued bills post their
    # monthly fee and VAT (a new bill version posts the change); the operator posts payments and
    # refunds. amount: + a credit to the holder, - a debit. Ratings are advisory (no netting code
    # reads them): one per rater, rated household and local month; the salt keys the
    # pseudonymous partner handles a rater sees (backend/settlement/ratings.py).
    (
        """CREATE TABLE wallet_postings (
            id INTEGER PRIMARY KEY,
            holder_kind TEXT NOT NULL CHECK (holder_kind IN ('household', 'community', 'point')),
            holder TEXT NOT NULL,
            community TEXT NOT NULL,
            member TEXT,
            source TEXT NOT NULL CHECK (source IN ('interval', 'delta', 'rounding', 'bill',
                                                   'payment', 'refund')),
            line TEXT NOT NULL,
            interval_start INTEGER,
            revision INTEGER,
            digest BLOB,
            energy_wh INTEGER,
            amount INTEGER NOT NULL,
            reference TEXT,
            recorded_by TEXT,
            time INTEGER NOT NULL
        )""",
        "CREATE INDEX wallet_postings_by_holder ON wallet_postings (holder_kind, holder, "
        "interval_start)",
        "CREATE INDEX wallet_postings_by_interval ON wallet_postings (community, interval_start)",
        """CREATE TABLE market_ratings (
            rater TEXT NOT NULL REFERENCES households (id),
            rated TEXT NOT NULL REFERENCES households (id),
            month TEXT NOT NULL,
            stars INTEGER NOT NULL CHECK (stars BETWEEN 1 AND 5),
            comment TEXT,
            created INTEGER NOT NULL,
            updated INTEGER NOT NULL,
            PRIMARY KEY (rater, rated, month)
        ) WITHOUT ROWID""",
        "CREATE INDEX market_ratings_by_rated ON market_ratings (rated, month)",
        """CREATE TABLE market_profiles (
            household TEXT PRIMARY KEY REFERENCES households (id),
            display_name TEXT,
            show_name INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE market_salt (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            salt BLOB NOT NULL
        )""",
        "INSERT INTO market_salt VALUES (1, randomblob(32))",
    ),
    # 12: unauthenticated rejections counted per (device of the topic, reason, minute), kept
    # for a retention (issue 14: a flood wrote 20,000 rows in 10 s). ``rejections`` keeps only
    # the permanent ones (seq by seq, for the acks). Rejections that could not name their
    # device, and signature/key failures (which prove nothing about the device), move over.
    (
        """CREATE TABLE rejection_minutes (
            device TEXT NOT NULL,
            reason TEXT NOT NULL,
            minute INTEGER NOT NULL,
            count INTEGER NOT NULL,
            detail TEXT NOT NULL,
            PRIMARY KEY (device, reason, minute)
        ) WITHOUT ROWID""",
        "CREATE INDEX rejection_minutes_by_minute ON rejection_minutes (minute)",
        "INSERT INTO rejection_minutes (device, reason, minute, count, detail) "
        "SELECT coalesce(device, ''), reason, time - time % 60, count(*), max(substr(detail, 1, 200)) "
        "FROM rejections WHERE permanent = 0 OR reason IN ('signature', 'key-id', 'key-validity') "
        "GROUP BY 1, 2, 3",
        "DELETE FROM rejections WHERE permanent = 0 "
        "OR reason IN ('signature', 'key-id', 'key-validity')",
    ),
    # 13: two more leaf kinds (issue 14): 'control' (the backend's control key, announced) and
    # 'gap' (a device's signed gap declaration), and the declared ranges. Widening a CHECK
    # leaves every row valid, so it is SQLite's documented in-place schema edit (lang_altertable
    # §7) instead of copying the log; RESET reloads this connection's schema, the table made and
    # dropped after it bumps the schema cookie so every other connection reloads too.
    (
        "PRAGMA writable_schema = ON",
        "UPDATE sqlite_master SET sql = replace(sql, '''device'', ''settlement'')', "
        "'''device'', ''settlement'', ''control'', ''gap'')') "
        "WHERE type = 'table' AND name = 'leaves'",
        "PRAGMA writable_schema = RESET",
        "CREATE TABLE schema_cookie_bump (x)",
        "DROP TABLE schema_cookie_bump",
        """CREATE TABLE declared_gaps (
            device TEXT NOT NULL,
            first INTEGER NOT NULL,
            last INTEGER NOT NULL,
            leaf_id INTEGER NOT NULL UNIQUE REFERENCES leaves (id),
            time INTEGER NOT NULL,
            PRIMARY KEY (device, first, last)
        )""",
    ),
    # 14: the operator console (issue 19, backend/console/): operator and auditor accounts apart
    # from households' logins, each with a TOTP secret; their sessions and one-time invitations
    # (tokens kept as SHA-256 only, as web_sessions and web_links are). scope: 'all' (the backend's
    # operator) or 'utility:<id>'.
    (
        """CREATE TABLE console_accounts (
            username TEXT PRIMARY KEY,
            role TEXT NOT NULL CHECK (role IN ('operator', 'auditor')),
            scope TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            totp_secret TEXT NOT NULL,
            totp_last_step INTEGER NOT NULL DEFAULT 0,
            created INTEGER NOT NULL
        )""",
        """CREATE TABLE console_sessions (
            token_hash BLOB PRIMARY KEY,
            username TEXT NOT NULL REFERENCES console_accounts (username),
            created INTEGER NOT NULL,
            expires INTEGER NOT NULL,
            idle_expires INTEGER NOT NULL
        )""",
        """CREATE TABLE console_invitations (
            token_hash BLOB PRIMARY KEY,
            role TEXT NOT NULL CHECK (role IN ('operator', 'auditor')),
            scope TEXT NOT NULL,
            created INTEGER NOT NULL,
            expires INTEGER NOT NULL,
            used_at INTEGER,
            used_by TEXT
        )""",
    ),
    # 15: metering-point assignments in the log (issue 17, docs/format.md §5.1): one more leaf
    # kind, 'assignment' (a salted commitment to a meter binding or an occupancy; the CHECK is
    # widened in place as in migration 13), and per such leaf its opening, which the backend
    # keeps and reveals only to parties entitled to the point: the 32-byte salt and the
    # committed fields (backend/access/assignments.py). ``binding`` is the meter_bindings or
    # occupancies id; ``valid_to`` the end the leaf states (NULL: open), which the backfill
    # compares with the binding's. Erasure empties salt and fields of a household's occupancies.
    (
        "PRAGMA writable_schema = ON",
        "UPDATE sqlite_master SET sql = replace(sql, '''control'', ''gap'')', "
        "'''control'', ''gap'', ''assignment'')') "
        "WHERE type = 'table' AND name = 'leaves'",
        "PRAGMA writable_schema = RESET",
        "CREATE TABLE schema_cookie_bump (x)",
        "DROP TABLE schema_cookie_bump",
        """CREATE TABLE assignment_openings (
            leaf_id INTEGER PRIMARY KEY REFERENCES leaves (id),
            kind TEXT NOT NULL CHECK (kind IN ('meter', 'occupancy')),
            binding INTEGER NOT NULL,
            metering_point TEXT NOT NULL,
            valid_to INTEGER,
            salt BLOB NOT NULL,
            fields BLOB NOT NULL
        )""",
        "CREATE INDEX assignment_openings_by_binding ON assignment_openings (kind, binding, leaf_id)",
        "CREATE INDEX assignment_openings_by_point ON assignment_openings (metering_point, leaf_id)",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)
