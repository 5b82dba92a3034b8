"""The FHIR models, imported from one place only.

fhir.resources has no R4 package; its R4B models are identical to R4 for CoverageEligibilityRequest,
CoverageEligibilityResponse and Coverage, so they are used here while the API advertises 4.0.1.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

FHIR_VERSION = "4.0.1"
# the abstract bases every resource derives from: a resourceType never names them (resource.html)
ABSTRACT_RESOURCES = frozenset({"Resource", "DomainResource"})


def resource_kind(name: Any) -> str:
    """What a ``resourceType`` value names: ``"resource"`` (a resource type), ``"abstract"`` (Resource,
    DomainResource), ``"datatype"`` (Coding, Element ...) or ``"unknown"`` (nothing, or not a string)."""
    if not isinstance(name, str) or not name.isidentifier() or len(name) > 64:
        return "unknown"
    return _kind(name)


@lru_cache(maxsize=1024)
def _kind(name: str) -> str:
    try:
        klass = get_fhir_model_class(name)
    except (KeyError, LookupError, TypeError, ValueError, AttributeError):
        return "unknown"
    from fhir.resources.R4B.resource import Resource

    if not issubclass(klass, Resource):
        return "datatype"
    return "abstract" if name in ABSTRACT_RESOURCES else "resource"


def model_class(resource_type: str) -> Any:
    """The R4B model class of a (concrete) resource type name; ValueError for anything else (a data type such as
    Coding, the abstract Resource, an unknown name, a value that is not a string)."""
    if resource_kind(resource_type) != "resource":
        raise ValueError(f"{resource_type!r} is not a FHIR resource type")
    return get_fhir_model_class(resource_type)


def validate_structure(resource: dict[str, Any]) -> Any:
    """Parse ``resource`` with its model; raises pydantic ValidationError on structural problems."""
    return model_class(resource["resourceType"]).model_validate(resource)
