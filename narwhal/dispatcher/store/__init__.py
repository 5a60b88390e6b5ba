"""The job store: its interface (``base``), SQLite (``sqlite``), in memory (``memory``)."""
