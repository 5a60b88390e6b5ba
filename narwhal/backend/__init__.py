"""The backend: metrics subscriber and dashboard (see the dashboard issue)."""
