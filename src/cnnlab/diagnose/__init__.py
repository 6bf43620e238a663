"""The checks of cnnlab-doctor for a network that will not train."""
