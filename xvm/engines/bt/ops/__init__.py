"""Instruction semantics of the bt engine, one module per family; see common.py."""
