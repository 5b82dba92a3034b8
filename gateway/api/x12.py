"""``POST /x12/$validate``: implementation-guide validation of a posted 270/271."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Response, current_app, jsonify, request

from gateway.errors import X12SyntaxError, quoted

x12 = Blueprint("x12", __name__)


@x12.post("/x12/$validate")
def validate():  # type: ignore[no-untyped-def]
    """Findings as JSON, or a 999 / TA1 when the client asks for ``application/edi-x12``. A payer's TA1, 999 or
    997 is read instead of validated as a set: what it says comes back under ``acknowledgment``."""
    from gateway.transport.acks import load_ack_codes, read_acknowledgments
    from gateway.x12.ack import AcknowledgmentError, build_999, build_ta1s
    from gateway.x12.validate import validate_x12

    ack = request.args.get("ack", "999").lower()
    if ack not in ("999", "ta1"):
        return jsonify(valid=False, error=f"ack must be 999 or ta1, not {quoted(ack, 20)}"), 400
    data = request.get_data()
    mappings = current_app.config.get("FHIR_X12_MAPPINGS")
    try:
        report = validate_x12(data, mappings=mappings)
    except X12SyntaxError as exc:
        return jsonify(valid=False, error=str(exc)), 400
    said = read_acknowledgments(report, data, load_ack_codes(mappings))
    if request.accept_mimetypes.best == "application/edi-x12":
        now = datetime.now(UTC).replace(tzinfo=None)
        if ack == "ta1":
            text = build_ta1s(report.interchanges, report.findings, control_number=1, now=now, mappings=mappings)
        else:
            try:
                text = build_999(report.transactions, report.findings, control_number=1, now=now,
                                 mappings=mappings)
            except AcknowledgmentError as exc:   # no set in a functional group: a TA1 (?ack=ta1) answers it
                return jsonify({**report.to_dict(), "error": f"no 999: {exc} (?ack=ta1)"}), 422
        return Response(text, mimetype="application/edi-x12")
    return jsonify({**report.to_dict(), **({"acknowledgment": said} if said else {})}), 200
