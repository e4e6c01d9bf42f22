"""Subcommands of the ``oscar`` CLI; each module has ``register(subparsers)``."""
