"""The FHIR models, imported from one place only.

fhir.resources has no R4 package; its R4B models are identical to R4 for CoverageEligibilityRequest,
CoverageEligibilityResponse and Coverage, so they are used here while the API advertises 4.0.1.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B import get_fhir_model_class

FHIR_VERSION = "4.0.1"


def model_class(resource_type: str) -> Any:
    """The R4B model class for a resource type name (raises KeyError-like errors for unknown ones)."""
    return get_fhir_model_class(resource_type)


def validate_structure(resource: dict[str, Any]) -> Any:
    """Parse ``resource`` with its model; raises pydantic ValidationError on structural problems."""
    return model_class(resource["resourceType"]).model_validate(resource)
