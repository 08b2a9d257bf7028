"""The command line: gathers options, calls the library, prints, maps errors to exit codes.

``deft_clean.cli:main`` is the ``deft-clean`` entry point (pyproject.toml).
"""

from .app import app, main

__all__ = ["app", "main"]
