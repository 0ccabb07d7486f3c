"""Who may see which readings: parties, metering points, bindings, grants, API keys, and the
bearer-token resolution every scoped route goes through."""
