"""machine package."""
