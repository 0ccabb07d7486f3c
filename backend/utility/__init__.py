"""What utilities consume: signed batches, OCMF exports, webhooks and fleet health."""
