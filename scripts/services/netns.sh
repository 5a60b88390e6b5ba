# Network namespaces for the LAN discovery tests (tests/test_lan.py,
# bench/discovery.py): `ip` builds a simulated LAN of namespaces joined by a
# bridge, and `dig` is the mDNS client the project did not write that must
# see the runners (it asks a responder directly on port 5353). No daemon to
# start: the tests create and remove their namespaces themselves, and never
# send mDNS on this machine's own interfaces.
# Sourced by scripts/test (see README.md beside this file).

PACKAGES+=(iproute2 bind9-dnsutils)
