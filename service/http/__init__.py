"""The built-in HTTP server (FastAPI inside `tuwen serve`)."""
