"""Device enrolment, key rotation and revocation, each a device leaf in the log."""
