"""The runner: job loop, git checkout, executors."""
