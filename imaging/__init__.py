"""Imaging core: DICOM/NIfTI I/O, volumes, pixel transforms, SEG/SR writing, synthetic studies.

Filled by the imaging/training issue (#4).
"""
