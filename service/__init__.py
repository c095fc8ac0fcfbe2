"""tuwen (图问): one resident service that owns one vision-language model and answers every source."""

__version__ = "0.1.0"
