"""`react` subcommands that react_dense adds through the `react.commands` entry-point group."""
