"""Who may talk to whom: mutual TLS and tokens for servers and clients (policy), and
the small certificate authority behind `splitnn certs` (certs)."""
