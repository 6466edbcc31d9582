"""The package version, in one place: setup.py reads it from here, orthokern.__version__ re-exports it."""
__version__ = "0.2.0"
