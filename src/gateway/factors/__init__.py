"""One package per second factor, each with the same files: models, store, service, errors."""
