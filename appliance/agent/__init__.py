"""The worker agent service."""
