"""Translation errors that list every problem, each with its FHIR path and X12 target."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.errors import GatewayError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: where it is in FHIR, which X12 element it would fill, why."""

    fhir_path: str
    message: str
    code: str = "required"          # an OperationOutcome issue-type code
    x12: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"fhir_path": self.fhir_path, "x12": self.x12, "code": self.code, "message": self.message}


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
            lines.append(f"  - {p.fhir_path}{target}: {p.message}")
        return "\n".join(lines)

    def to_operation_outcome(self) -> dict:
        issues = [{"severity": "error", "code": p.code, "details": {"text": p.message},
                   "expression": [p.fhir_path], **({"diagnostics": f"X12 {p.x12}"} if p.x12 else {})}
                  for p in self.problems] or [{"severity": "error", "code": "processing",
                                               "details": {"text": self.summary}}]
        return {"resourceType": "OperationOutcome", "issue": issues}
