"""FHIR helpers: the one import point for the R4 models, validation and our own rules."""

FHIR_JSON = "application/fhir+json"
# what a FHIR body is sent as: R4 (http.html) says a response SHALL name its charset, UTF-8
FHIR_JSON_UTF8 = f"{FHIR_JSON}; charset=utf-8"
