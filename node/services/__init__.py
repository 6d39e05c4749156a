"""Domain services of the node: plain Python, no pynetdicom, no gRPC.

The DICOM gateway turns events into calls on these services and their outcomes back into
statuses; the same services serve the CLI and (later) peers.
"""
