"""immunomon: clinical-trial immunomonitoring from FCS files to a trial report."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("immunomon")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"
