"""CLI verbs: fcs."""

from .app import app, fcs_app  # noqa: F401
