# The browser tests/backend/test_browser.py drives: Debian's Chromium, run
# headless by Playwright for Python (a test dependency in pyproject.toml).
# Playwright never downloads a browser of its own here: the tests name
# /usr/bin/chromium. No daemon to start.
# Sourced by scripts/test (see README.md beside this file).

PACKAGES+=(chromium)
