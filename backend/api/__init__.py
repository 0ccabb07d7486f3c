"""The HTTP app: assembly of every concept's routes, one place for API errors, request limits."""
