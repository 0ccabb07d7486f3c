"""MQTT ingest: subscribe, check each message (cheapest first), commit in batches, then ack."""
