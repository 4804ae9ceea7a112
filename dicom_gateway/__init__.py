"""The DICOM gateway: DIMSE and STOW-RS ingest, spool, forwarding, study completeness.

Filled by the gateway issue (#3).
"""
