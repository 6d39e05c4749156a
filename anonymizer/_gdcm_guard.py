"""Keep python-gdcm importable whatever the working directory holds.

python-gdcm (pydicom's JPEG Lossless and JPEG-LS decoder) runs ``import dl``, a Python 2
module, when pydicom loads its plug-ins, and fails with an AttributeError, taking every
pydicom import with it, when the working directory holds a folder or file of that name
(a ``dl`` downloads folder, say). Marking the module absent makes it skip that step.
Imported first by the packages that load pydicom.
"""

import sys

sys.modules.setdefault("dl", None)  # type: ignore[arg-type]
