"""Compatibility shims for third-party packages, each explaining the problem it works around."""
