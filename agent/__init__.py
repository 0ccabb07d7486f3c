"""The gateway agent: polls meters, signs readings, keeps them in a durable outbox, publishes them."""
