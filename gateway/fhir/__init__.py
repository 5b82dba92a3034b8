"""FHIR helpers: the one import point for the R4 models, validation and our own rules."""
