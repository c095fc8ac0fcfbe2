"""Folder-watching source: watch scans, write sidecars and catalogues."""
