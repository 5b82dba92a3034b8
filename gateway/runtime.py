"""Process start-up: load the static tables once, then keep the garbage collector off them.

The X279A1 structure, the code tables and pyx12's maps are tens of thousands of long-lived
objects. Every full collection would walk them again while reading a large file (it doubled the
reader's time in ``make bench``), so servers and the CLI load them up front and move them to the
permanent generation with ``gc.freeze()``. They are never garbage, so nothing is lost.
"""

from __future__ import annotations

import gc
from functools import lru_cache


@lru_cache(maxsize=4)
def warm_up(mappings: str | None = None, *, validation: bool = True) -> None:
    """Load structures (and validation maps) for ``mappings``, then freeze what is alive."""
    from gateway.x12.structure import known_segment_ids, load_transaction

    for set_id in ("270", "271"):
        load_transaction(set_id, mappings)
    known_segment_ids(mappings)
    if validation:
        from gateway.x12.validate import _engine

        engine = _engine(mappings)
        for filename in ("x12.control.00501.xml", "270.5010.X279.A1.xml", "271.5010.X279.A1.xml"):
            engine.load(filename)
    gc.collect()
    gc.freeze()


@lru_cache(maxsize=1)
def warm_up_fhir() -> None:
    """Build the FHIR models' validators now (they are built lazily, on the first request otherwise),
    so that the freeze in ``warm_up`` covers them too."""
    from gateway.fhir.structure import structure_problems

    for resource_type in ("CoverageEligibilityRequest", "CoverageEligibilityResponse", "Patient", "Coverage",
                          "Organization", "Practitioner", "PractitionerRole", "RelatedPerson", "Bundle"):
        structure_problems({"resourceType": resource_type})

