"""Bearer-token authentication (gateway.api.auth) on a tiny Flask app."""

from __future__ import annotations

import hashlib
import logging

import pytest
from flask import Flask, g, jsonify

from gateway.api.auth import TokenSet, init_auth
from gateway.errors import ConfigError, GatewayError

FULL = "full-access-token-0123456789"
READ = "read-only-token-abcdefghijk"
FHIR_JSON = "application/fhir+json"


def make_app(tokens: str | None) -> Flask:
    app = Flask(__name__)
    app.config["TESTING"] = True
    if tokens is not None:
        app.config["FHIR_X12_TOKENS"] = tokens
    init_auth(app)

    @app.get("/metadata")
    def metadata():  # type: ignore[no-untyped-def]
        return jsonify(resourceType="CapabilityStatement")

    @app.get("/healthz")
    def healthz():  # type: ignore[no-untyped-def]
        return jsonify(status="ok")

    @app.route("/CoverageEligibilityRequest", methods=["GET", "POST"])
    def resources():  # type: ignore[no-untyped-def]
        return jsonify(client=g.get("client"))

    return app


@pytest.fixture
def client():  # type: ignore[no-untyped-def]
    return make_app(f"{FULL}, {READ}:read").test_client()


def issue(response) -> dict:  # type: ignore[no-untyped-def]
    body = response.get_json(force=True)
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]


# -- open when unset ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [" , ,", ",", "   "])
def test_set_to_no_token_at_all_is_a_configuration_error_not_an_open_api(value: str) -> None:
    """"$UNSET," is a slip: only an unset or empty FHIR_X12_TOKENS runs without authentication."""
    with pytest.raises(ConfigError, match="holds no token"):
        make_app(value)


@pytest.mark.parametrize("value", [None, ""])
def test_open_when_unset_and_warns(value: str | None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.api.auth"):
        app = make_app(value)
    warnings = [r for r in caplog.records if r.name == "gateway.api.auth" and r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == ["no FHIR_X12_TOKENS: the API is open"]
    response = app.test_client().post("/CoverageEligibilityRequest")
    assert response.status_code == 200


def test_no_warning_when_configured(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.api.auth"):
        make_app(FULL)
    assert not [r for r in caplog.records if r.name == "gateway.api.auth"]


# -- 401 ---------------------------------------------------------------------------------------------------

def test_missing_header_is_401(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/CoverageEligibilityRequest")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="fhir-x12-gateway"'
    assert response.content_type.startswith(FHIR_JSON)
    found = issue(response)
    assert found["code"] == "login"
    assert found["severity"] == "error"
    assert "Authorization" in found["diagnostics"]


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", f"Bearer {FULL} extra", FULL,
                                    f"Token {FULL}"])
def test_malformed_header_is_401(client, header: str) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/CoverageEligibilityRequest", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="fhir-x12-gateway"')
    assert "invalid_token" not in response.headers["WWW-Authenticate"]
    assert issue(response)["code"] == "login"
    assert FULL not in response.get_data(as_text=True)


def test_wrong_token_is_401_invalid_token_and_not_echoed(client) -> None:  # type: ignore[no-untyped-def]
    wrong = "not-a-real-token-but-long-enough"
    response = client.get("/CoverageEligibilityRequest", headers={"Authorization": f"Bearer {wrong}"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="fhir-x12-gateway", error="invalid_token"'
    assert response.content_type.startswith(FHIR_JSON)
    found = issue(response)
    assert found["code"] == "login"
    assert found["diagnostics"]
    assert wrong not in response.get_data(as_text=True)
    assert wrong not in str(dict(response.headers))


def test_scheme_is_case_insensitive(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/CoverageEligibilityRequest", headers={"Authorization": f"bearer {FULL}"})
    assert response.status_code == 200


# -- full access, read-only --------------------------------------------------------------------------------

def test_full_token_may_post_and_client_label_is_set(client) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/CoverageEligibilityRequest", headers={"Authorization": f"Bearer {FULL}"})
    assert response.status_code == 200
    assert response.get_json() == {"client": "token#1"}


def test_read_only_token_may_get(client) -> None:  # type: ignore[no-untyped-def]
    response = client.get("/CoverageEligibilityRequest", headers={"Authorization": f"Bearer {READ}"})
    assert response.status_code == 200
    assert response.get_json() == {"client": "token#2"}
    assert client.head("/CoverageEligibilityRequest", headers={"Authorization": f"Bearer {READ}"}).status_code == 200


def test_read_only_token_post_is_403(client) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/CoverageEligibilityRequest", headers={"Authorization": f"Bearer {READ}"})
    assert response.status_code == 403
    assert response.content_type.startswith(FHIR_JSON)
    found = issue(response)
    assert found["code"] == "forbidden"
    assert found["severity"] == "error"
    assert "token#2" in found["diagnostics"]
    assert READ not in response.get_data(as_text=True)


def test_open_paths_need_no_token(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/metadata").status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.get("/metadata/").status_code != 401          # trailing slash is still the open path
    assert client.get("/nowhere").status_code == 401            # unknown paths are not open


def test_custom_open_paths() -> None:
    app = Flask(__name__)
    app.config["FHIR_X12_TOKENS"] = FULL
    init_auth(app, open_paths=("/public",))

    @app.get("/public")
    def public():  # type: ignore[no-untyped-def]
        return "ok"

    @app.get("/metadata")
    def metadata():  # type: ignore[no-untyped-def]
        return "ok"

    test = app.test_client()
    assert test.get("/public").status_code == 200
    assert test.get("/metadata").status_code == 401


def test_options_preflight_passes(client) -> None:  # type: ignore[no-untyped-def]
    assert client.options("/CoverageEligibilityRequest").status_code == 200


# -- TokenSet ----------------------------------------------------------------------------------------------

def test_plaintext_not_retained() -> None:
    tokens = TokenSet(f"{FULL},{READ}:read")
    assert len(tokens) == 2
    dump = repr(vars(tokens)) + repr(tokens)
    for entry in vars(tokens)["_entries"]:
        dump += repr(vars(entry) if hasattr(entry, "__dict__") else
                     {name: getattr(entry, name) for name in entry.__slots__})
    assert FULL not in dump and READ not in dump
    assert FULL.encode() not in dump.encode()
    assert hashlib.sha256(FULL.encode()).digest() in [e.digest for e in vars(tokens)["_entries"]]


def test_lookup_and_labels() -> None:
    tokens = TokenSet(f" {FULL} ,, {READ} : read ")
    assert tokens.labels == ("token#1", "token#3")
    assert tokens.lookup(FULL).label == "token#1"
    assert tokens.lookup(FULL).read_only is False
    assert tokens.lookup(READ).read_only is True
    assert tokens.lookup("x" * 30) is None
    assert tokens.lookup("") is None


def test_lookup_compares_every_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.api.auth as auth

    calls = []
    real = auth.hmac.compare_digest

    def counting(a, b):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(a, b)

    tokens = TokenSet(",".join(f"token-number-{i:04d}-padding" for i in range(5)))
    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    assert tokens.lookup("token-number-0000-padding") is not None   # the first one matches...
    assert len(calls) == 5                                          # ...yet all five were compared


@pytest.mark.parametrize("spec, number", [("Qz7kW", 1), (f"{FULL},Xv9pLm2:read", 2), (f"{FULL},,Jh4", 3)])
def test_short_token_is_config_error_naming_entry(spec: str, number: int) -> None:
    with pytest.raises(ConfigError) as caught:
        TokenSet(spec)
    assert isinstance(caught.value, GatewayError)
    message = str(caught.value)
    assert f"entry {number}" in message
    assert "FHIR_X12_TOKENS" in message
    for part in spec.split(","):
        if part and part != FULL:
            assert part.split(":")[0] not in message


def test_short_token_fails_init_auth() -> None:
    app = Flask(__name__)
    app.config["FHIR_X12_TOKENS"] = "tiny"
    with pytest.raises(ConfigError):
        init_auth(app)


@pytest.mark.parametrize("spec", [f"{FULL}:write", "token with spaces inside", f"{FULL},{FULL}:read"])
def test_other_bad_entries(spec: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TokenSet(spec)
    assert FULL not in str(caught.value)
