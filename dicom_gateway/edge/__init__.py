"""The Orthanc DICOM edge (``RADCLOUD_GATEWAY_EDGE=orthanc``): Orthanc's own DICOM server listens
on the gateway's AE title and port, and radcloud's policy runs inside Orthanc in an
orthanc-python plugin (Debian ``orthanc-python`` 4.0, Python 3.11).

- :mod:`dicom_gateway.edge.plugin`: the plugin entry script Orthanc runs (``PythonScript``): it
  builds the edge and registers its callbacks, nothing more;
- :mod:`dicom_gateway.edge.policy`: the C-STORE filter: the calling AE title's sender and
  hospital, the size limit, the required UIDs from Orthanc's parse, the study's owner and
  patient; refusals quarantined with the original bytes and answered with the pynetdicom
  service's statuses;
- :mod:`dicom_gateway.edge.peers`: radcloud's senders and C-MOVE destinations mirrored into
  Orthanc's peer table, which Orthanc checks every association against (AE title and host);
- :mod:`dicom_gateway.edge.query`: C-FIND and C-MOVE, scoped to the caller's hospital;
- :mod:`dicom_gateway.edge.runtime`: everything built from the settings, and the edge's
  background work (peer sync, audit of stored studies).

Everything but ``plugin`` is plain Python: it is tested without Orthanc, and runs in it.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PLUGIN_SCRIPT"]

PLUGIN_SCRIPT = Path(__file__).with_name("plugin.py")
"""The script Orthanc's Python plugin runs (configuration key ``PythonScript``)."""
