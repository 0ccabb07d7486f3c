"""The Merkle log (RFC 9162): stored perfect subtree nodes, compact range, proof plans."""
