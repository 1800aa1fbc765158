"""CLI verbs: study."""

from .app import app, fcs_app  # noqa: F401
