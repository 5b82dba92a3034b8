"""Pure translation between FHIR R4 eligibility resources and X12 005010X279A1.

No I/O, no clock, no Flask: every function takes parsed input, the mapping tables and (where a
timestamp is written) ``now``, and returns its result with the notes of what could not be carried.
"""

from gateway.translate.errors import Problem, TranslationError
from gateway.translate.notes import Note
from gateway.translate.tables import Tables, load_tables

__all__ = ["Note", "Problem", "Tables", "TranslationError", "load_tables"]
