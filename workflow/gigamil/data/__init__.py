"""Patch stores (zarr) and lazy bags; also ships the CC0 demo slide."""
