"""Architecture facts shared by both engines."""
