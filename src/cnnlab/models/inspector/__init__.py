"""The architecture inspector: what a network is before any compute is spent on training it (docs/summary.md)."""
