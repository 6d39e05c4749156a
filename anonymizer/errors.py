"""The one exception hierarchy of the anonymizer: callers catch ``AnonymizationError``."""

from __future__ import annotations


class AnonymizationError(Exception):
    """Root of every error raised by the anonymizer."""


class RecipeError(AnonymizationError):
    """A recipe file is malformed or uses something our engine does not support.

    Raised instead of deid's ``sys.exit`` so a broken recipe is reported, never
    silently replaced by deid's default recipe.
    """


class ProfileNotFound(AnonymizationError):
    """A profile, option or recipe file name that does not exist was requested."""


class BurnedInAnnotation(AnonymizationError):
    """The instance says ``BurnedInAnnotation = YES``: its pixels may carry PHI.

    The engine only de-identifies the header, so such instances are refused unless
    the caller explicitly allows them.
    """


class PixelsFlagged(BurnedInAnnotation):
    """A ``%filter`` of the profile flags the pixels as showing PHI (a blacklist, or a
    group that names no place to clean): refused unless burned-in text is allowed."""


class PixelsNotCleanable(BurnedInAnnotation):
    """A filter names rectangles to blank, but the pixel data cannot be blanked: no decoder
    for its transfer syntax (video, 12-bit JPEG Extended, HTJ2K), data that does not decode,
    bit-packed samples, fewer bytes than its geometry."""


class EncapsulatedDocument(AnonymizationError):
    """The instance holds an encapsulated document: a PDF report, a CDA, a 3D model.

    Its content is free text or geometry the profile's attributes do not reach: a scanned
    request or a dose report names the patient on its first page. The engine cannot clean
    it, so such instances are refused unless the caller explicitly allows them.
    """


class UnreadableInput(AnonymizationError):
    """The input is not a readable, complete DICOM Part 10 instance."""
