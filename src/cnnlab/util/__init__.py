"""Small helpers every layer may use: atomic files, dotted names, the source tree, plotting, secrets."""
