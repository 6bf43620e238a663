"""The config tree: composing it, its schema and checks, and reading configs saved by earlier versions."""
