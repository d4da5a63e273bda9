"""x86 facts shared by both engines: layout, registers, boot state, firmware tables."""
