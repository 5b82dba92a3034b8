"""``POST /x12/$validate``: implementation-guide validation of a posted 270/271."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Response, current_app, jsonify, request

from gateway.errors import X12SyntaxError

x12 = Blueprint("x12", __name__)


@x12.post("/x12/$validate")
def validate():  # type: ignore[no-untyped-def]
    """Findings as JSON, or a 999 / TA1 when the client asks for ``application/edi-x12``."""
    from gateway.x12.ack import build_999, build_ta1
    from gateway.x12.validate import validate_x12

    data = request.get_data()
    try:
        report = validate_x12(data, mappings=current_app.config.get("FHIR_X12_MAPPINGS"))
    except X12SyntaxError as exc:
        return jsonify(valid=False, error=str(exc)), 400
    if request.accept_mimetypes.best == "application/edi-x12":
        now = datetime.now(UTC).replace(tzinfo=None)
        ack = request.args.get("ack", "999")
        if ack == "ta1":
            isa = report.interchanges[0] if report.interchanges else None
            text = build_ta1(isa, report.findings, control_number=1, now=now)
        else:
            text = build_999(report.transactions, report.findings, control_number=1, now=now)
        return Response(text, mimetype="application/edi-x12")
    return jsonify(report.to_dict()), 200
