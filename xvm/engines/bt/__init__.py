"""bt package."""
