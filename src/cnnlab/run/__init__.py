"""One run from a config: validating and building it, training, testing and recording, its directory, restoring it."""
