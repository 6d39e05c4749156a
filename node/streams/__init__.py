"""Processing streams (MagickBox): a called AE title turns a study into a job that a
long-lived worker runs near the data; DICOM results come back as a derived series.

Manifests and the registry are plain Python; the worker talks to the catalog's JobService
through :mod:`node.streams.jobs`, and DICOM networking stays in :mod:`node.dicom`.
"""

from node.streams.manifest import StreamManifest
from node.streams.registry import ManifestProblem, StreamRegistry, load_streams

__all__ = ["ManifestProblem", "StreamManifest", "StreamRegistry", "load_streams"]
