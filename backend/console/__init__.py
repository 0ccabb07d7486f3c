"""The operator console: server-rendered pages for a community's or utility's operators and auditors."""
