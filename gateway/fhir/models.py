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
    return _lookup(name)[0]


def _lookup(name: Any) -> tuple[str, Any]:
    """(its kind, the model class or None) for a ``resourceType`` value."""
    if not isinstance(name, str) or not name.isidentifier() or len(name) > 64:
        return "unknown", None
    return _looked_up(name)


@lru_cache(maxsize=1024)
def _looked_up(name: str) -> tuple[str, Any]:
    try:
        klass = get_fhir_model_class(name)
    except (KeyError, LookupError, TypeError, ValueError, AttributeError):
        return "unknown", None
    from fhir.resources.R4B.resource import Resource

    if not issubclass(klass, Resource):
        return "datatype", klass
    return ("abstract" if name in ABSTRACT_RESOURCES else "resource"), klass


def model_class(resource_type: str) -> Any:
    """The R4B model class of a (concrete) resource type name; ValueError for anything else (a data type such as
    Coding, the abstract Resource, an unknown name, a value that is not a string)."""
    kind, klass = _lookup(resource_type)
    if kind != "resource":
        raise ValueError(f"{resource_type!r} is not a FHIR resource type")
    return klass


def validate_structure(resource: dict[str, Any]) -> Any:
    """Parse ``resource`` with its model; raises pydantic ValidationError on structural problems."""
    return model_class(resource["resourceType"]).model_validate(resource)
