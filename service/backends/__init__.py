"""Model backends: the only code that talks to a model; built by `registry.create_backend`."""
