# promtool (`promtool check metrics`), which the /metrics tests pipe every
# scrape through: Prometheus' own parser and linter of the text format
# (tests/test_metrics.py, tests/dispatcher/test_metrics_endpoint.py,
# tests/agent/test_agent_metrics.py). Debian ships it only with the server,
# in the package prometheus; the tests never start the server. No daemon
# to start. Sourced by scripts/test (see README.md beside this file).

PACKAGES+=(prometheus)
