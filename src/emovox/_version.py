"""The emovox version, in a module of its own so that any module can import it without a cycle
through the package ``__init__`` (which lazily imports :mod:`emovox.predict`)."""

__version__ = "0.1.0"
