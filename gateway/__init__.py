"""fhir-x12-gateway: FHIR R4 CoverageEligibilityRequest/Response <-> X12 005010X279A1 270/271."""

__version__ = "0.1.0"
