"""The `egressgw` command line; every subcommand lives in its own module here (`main` is the entry point)."""

from appliance.cli.main import main

__all__ = ["main"]
