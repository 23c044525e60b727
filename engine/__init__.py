"""MyOsicam Rotator engine: runs on the panel host, knows nothing of Slack."""

__version__ = "0.1.0"
