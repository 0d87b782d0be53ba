"""The command line: :mod:`campp_cli.cli.main` (the group and the exit codes) and one file per subcommand."""
