"""The backend: verifying ingest, the store, the Merkle log, netting and settlement, API and web."""
