"""The dispatcher: job store, scheduler, REST API."""
