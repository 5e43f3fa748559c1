"""Subcommands of the ``bodycam`` CLI, one module each (see ``bodycam_ros.cli``)."""
