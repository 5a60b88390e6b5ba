"""What the tests are built from: real daemons and clusters, waits, ports,
stand-ins, and the pytest plugins that check every test.

- ``eventually``: the one polling loop (``eventually``, ``eventually_async``).
- ``ports``: free loopback ports.
- ``repos``: real git repositories on disk.
- ``daemons``: ``python -m narwhal`` processes, their flags, the REST ``Client``.
- ``keys``: CurveZMQ keys for separate dispatcher and runner processes.
- ``cluster``: a dispatcher and named runners; ``probe``: invariants through the API.
- ``peers``: hand-driven ZeroMQ peers; ``standins``: peers that run nothing.
- ``netns``: a simulated LAN of network namespaces.
- ``broker``, ``webhooks``, ``forge``: RabbitMQ, signed deliveries, a forge's status API.
- ``docker``: the engine and the busybox image.
- plugins (loaded by tests/conftest.py): ``fixtures``, ``leaks``, ``tiers``.

This package imports no test module and nothing of ``bench``; the benchmarks
may import it (they start the same daemons).
"""
