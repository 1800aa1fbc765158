"""CLI verbs: gate."""

from .app import app, fcs_app  # noqa: F401
