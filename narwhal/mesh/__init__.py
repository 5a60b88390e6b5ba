"""The mesh: wire protocol, ZeroMQ transport."""
