"""The dashboard's web server (docs/backend.md): it never imports the dispatcher.

By concept: ``server`` (one backend, composed), ``app`` (routes),
``access`` + ``sessions`` (who is looking), ``upstream`` (the dispatcher's
REST API) + ``history`` (what is read through it), ``live`` (the feed's
replica, for the present) + ``runners`` (load history), ``hub`` +
``websocket`` (browsers' sockets), ``logs`` + ``lines`` (followed logs).
"""
