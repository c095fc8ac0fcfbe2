"""The files staff see next to their scans: JSON and XMP sidecars, the CSV catalogue and ALTO.

A sink of the spine, used by the folder watcher and by `tuwen batch` alike:
- `sidecar`: the JSON record and the XMP packet of one scan, written atomically;
- `xmp_merge`: how an existing XMP (digiKam, Lightroom, a person) is merged into, never overwritten;
- `catalogue`: the per-folder CSV for Excel, safe against concurrent and interrupted appends;
- `alto`: ALTO XML for library and archive digitisation tools;
- `output`: a finished job turned into those files (and moved along when the scan is renamed).
"""
