"""The training engine: the loop itself and the pieces it calls at epoch ends."""
