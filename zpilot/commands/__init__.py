"""CLI sub-commands: argument parsing and output only; the work is done by the packages."""
