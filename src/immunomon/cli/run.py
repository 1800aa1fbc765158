"""CLI verbs: run."""

from .app import app, fcs_app  # noqa: F401
