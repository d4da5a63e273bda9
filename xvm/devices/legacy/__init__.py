"""legacy package."""
