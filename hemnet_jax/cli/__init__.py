"""The command-line layer every program shares (app.py) and the host set-up it does (host_memory.py)."""

from hemnet_jax.cli.app import USER_ERRORS, define_config_flags, exit_with_error, run, start

__all__ = ["USER_ERRORS", "define_config_flags", "exit_with_error", "run", "start"]
