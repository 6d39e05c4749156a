"""The DICOM gateway: the only package of ours that imports pynetdicom."""
