"""The harness that runs darb for real, shared by tests/, benchmarks/ and scripts/.

It starts the control plane and the executor agent as separate processes on loopback
ports (``processes``, ``control_plane``, ``agent``), builds local conda channels to
install from (``channel``), provides the embedded PostgreSQL server and fresh databases
for the tests (``postgres``, ``pg_server``, ``schema``), makes throw-away TLS
certificates (``certs``) and points at reference data kept under tests/data (``kit``).
"""
