"""The command-line entry points, one thin module per command, and the checks that run before Hydra starts."""
