"""radcloud's processes (the shell): the supervisor, the component definitions, and Orthanc."""

from radcloud.services.components import api_component, components, gateway_component
from radcloud.services.orthanc import (
    DicomModality,
    check_orthanc_installed,
    orthanc_component,
    orthanc_components,
    orthanc_config,
    write_orthanc_config,
)
from radcloud.services.supervisor import (
    Component,
    ComponentStatus,
    Supervisor,
    check_ports_free,
    http_ok,
)

__all__ = [
    "Component",
    "ComponentStatus",
    "DicomModality",
    "Supervisor",
    "api_component",
    "check_orthanc_installed",
    "check_ports_free",
    "components",
    "gateway_component",
    "http_ok",
    "orthanc_component",
    "orthanc_components",
    "orthanc_config",
    "write_orthanc_config",
]
