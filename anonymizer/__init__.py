"""De-identification near the source: PS3.15 profiles as deid recipes, keyed pseudonyms.

Public API::

    profile = load_profile(["basic"], options=["retain-uids"])
    deid = Deidentifier(profile, secret=load_secret(path), reid_map=ReidentificationMap(db, key))
    clean = deid.deidentify_bytes(part10_bytes)

The library reads no configuration and no environment: callers pass paths and bytes.
"""

from anonymizer import _gdcm_guard  # noqa: F401  # first: before pydicom loads
from anonymizer.engine import DeidentifiedInstance, Deidentifier, read_part10
from anonymizer.errors import (
    AnonymizationError,
    BurnedInAnnotation,
    EncapsulatedDocument,
    PixelsFlagged,
    PixelsNotCleanable,
    ProfileNotFound,
    RecipeError,
    UnreadableInput,
)
from anonymizer.interfaces import DatasetDeidentifier, PseudonymStore
from anonymizer.profiles import OPTIONS, PROFILES, Profile, load_profile
from anonymizer.pseudonyms import generate_secret, load_secret
from anonymizer.reidentification import Lookup, Mapping, ReidentificationMap

__all__ = [
    "OPTIONS",
    "PROFILES",
    "AnonymizationError",
    "BurnedInAnnotation",
    "DatasetDeidentifier",
    "DeidentifiedInstance",
    "Deidentifier",
    "EncapsulatedDocument",
    "Lookup",
    "Mapping",
    "PixelsFlagged",
    "PixelsNotCleanable",
    "Profile",
    "ProfileNotFound",
    "PseudonymStore",
    "RecipeError",
    "ReidentificationMap",
    "UnreadableInput",
    "generate_secret",
    "load_profile",
    "load_secret",
    "read_part10",
]
