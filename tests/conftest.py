"""The test suite's plugins; everything they build on lives in ``tests.support``."""

pytest_plugins = ["tests.support.fixtures", "tests.support.leaks", "tests.support.tiers"]
