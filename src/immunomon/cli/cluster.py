"""CLI verbs: cluster."""

from .app import app, fcs_app  # noqa: F401
