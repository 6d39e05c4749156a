"""One site's grid node: DICOM gateway, storage provider, anonymizer routing, local index."""
