"""Generated from proto/node/v1: never edit by hand, run proto/generate.py."""
