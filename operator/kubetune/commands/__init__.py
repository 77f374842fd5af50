"""Subcommands of the `kubetune` CLI, one module each."""
