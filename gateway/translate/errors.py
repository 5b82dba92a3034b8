"""Translation errors that list every problem, each with its FHIR path and X12 target."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.errors import GatewayError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where it is in FHIR, which X12 element it would fill, why."""

    fhir_path: str
    message: str
    code: str = "required"          # an OperationOutcome issue-type code
    x12: str | None = None
    # further FHIRPaths of the same issue: the other places a missing datum may come from, or the reference through
    # which a resource the client did not send was fetched (an issue may carry several expressions)
    also: tuple[str, ...] = ()

    @property
    def expressions(self) -> list[str]:
        """The issue's expressions: ``fhir_path`` first."""
        return [self.fhir_path, *self.also]

    def to_dict(self) -> dict[str, Any]:
        return {"fhir_path": self.fhir_path, "x12": self.x12, "code": self.code, "message": self.message,
                **({"also": list(self.also)} if self.also else {})}


@dataclass
class TranslationError(GatewayError):
    """The input was understood but cannot be translated; ``status`` is the HTTP status to answer."""

    summary: str
    problems: list[Problem] = field(default_factory=list)
    status: int = 422

    def __post_init__(self) -> None:
        super().__init__(self.summary)

    def __str__(self) -> str:
        lines = [self.summary]
        for p in self.problems:
            target = f" (X12 {p.x12})" if p.x12 else ""
            lines.append(f"  - {' | '.join(p.expressions)}{target}: {p.message}")
        return "\n".join(lines)

    def to_operation_outcome(self) -> dict:
        issues = [{"severity": "error", "code": p.code, "details": {"text": p.message},
                   "expression": p.expressions, **({"diagnostics": f"X12 {p.x12}"} if p.x12 else {})}
                  for p in self.problems] or [{"severity": "error", "code": "processing",
                                               "details": {"text": self.summary}}]
        return {"resourceType": "OperationOutcome", "issue": issues}
