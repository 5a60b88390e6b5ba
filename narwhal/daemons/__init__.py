"""The daemons put together: ``up``, ``dispatcher``, ``runner`` and ``agent``.

The one place that imports several of the daemon packages: the agent, the
dispatcher and the runner never import each other (``scripts/check`` holds
them to it), so whatever joins them (``narwhal up``'s embedded runner and
webhook endpoints, the executor a runner gets) is done here. The CLI parses
flags into config objects, holds the data directory's lock and runs one of
the ``*_main`` coroutines with ``asyncio.run``; each installs its signal
handlers (``signals``) and returns once its daemon is shut down.

One module per daemon, so that each loads only what it runs: ``narwhal
agent`` loads neither pyzmq nor the dispatcher, a runner with the local
executor never the Docker SDK (``executors`` picks the executor when the
daemon starts, not while flags are read).
"""
