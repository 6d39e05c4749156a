"""Generated from proto/catalog/v1: never edit by hand, run proto/generate.py."""
