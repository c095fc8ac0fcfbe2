"""Model backends: the only code that talks to a model. Built by `service.backends.registry.create_backend`."""
