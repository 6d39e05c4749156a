"""The ``gridpacs`` command: composes the CLIs of node, catalog, storage and anonymizer."""

import sys as _sys

# Before any sub-command loads pydicom: see anonymizer/_gdcm_guard.py (python-gdcm and a
# ``dl`` folder in the working directory). Not imported from there, so ``gridpacs --help``
# stays light.
_sys.modules.setdefault("dl", None)  # type: ignore[arg-type]
