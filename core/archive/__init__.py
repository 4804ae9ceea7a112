"""radcloud's image archive seam (Orthanc)."""

from core.archive.orthanc import orthanc_client, orthanc_healthy, wait_for_orthanc

__all__ = ["orthanc_client", "orthanc_healthy", "wait_for_orthanc"]
