from narwhal.cli import entrypoint

entrypoint()
