"""The job types the spine hands to sources and sinks, so adapters never import `db/` themselves.

A watcher or a bot reads a finished job's fields and its status; how jobs are stored (SQLite or PostgreSQL,
which columns, which indexes) stays behind the queue's API.
"""

from __future__ import annotations

from db.files import FileRow, FileSeen
from db.models import Job, JobStatus, ReviewStatus

__all__ = ["FileRow", "FileSeen", "Job", "JobStatus", "ReviewStatus"]
