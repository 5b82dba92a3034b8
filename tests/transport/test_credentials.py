"""Payer credentials: routing-table settings, the client sending them, the simulator requiring them, mutual TLS.

The password used here is a marker: it must never show up in a repr, a log line or an error message.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from werkzeug.serving import make_server

from gateway.cli import main
from gateway.errors import ConfigError, GatewayError, MappingError
from gateway.payer.app import create_payer_app, parse_accounts
from gateway.service import _KINDS
from gateway.transport import core
from gateway.transport.client import (
    PayerClient,
    PayerError,
    PayerUnauthorized,
    PayerUnavailable,
    _request_failure,
)
from gateway.transport.routing import Route, load_routes, routes_from_config
from tests.conftest import ISSUE_TYPES
from tests.payer.test_answer import DELGADO
from tests.transport.test_client import (
    ENDPOINTS,
    GOOD_EB,
    REQUEST,
    TRACE,
    CannedSession,
    CountingSession,
    core_error_envelope,
    table,
)

USER = "fhirx12gw"
PASSWORD = "Tr0ub4dor&3-marker"        # looked for in every repr, message and log line
WRONG = "not-the-password"
ENV = {"GW_PAYER_PASSWORD": PASSWORD, "GW_WRONG_PASSWORD": WRONG}
SECRETS = (PASSWORD, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())


def routes(payers: dict, *, environ: dict | None = None, folder: Path | None = None, override: str | None = None,
           **defaults):
    defaults.setdefault("transport", "soap")
    return load_routes(table(payers, **defaults), override, environ=ENV if environ is None else environ,
                       folder=folder)


def problems(payers: dict, **kwargs) -> str:
    with pytest.raises(MappingError) as caught:
        routes(payers, **kwargs)
    return str(caught.value)


def login(password_env: str = "GW_PAYER_PASSWORD") -> dict:
    return {"username": USER, "password_env": password_env}


def no_secret_in(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


# ----------------------------------------------------------------------------------------------- certificates


@pytest.fixture(scope="module")
def pki(tmp_path_factory, loopback_ca: Path) -> Path:
    """The shared test CA and its server certificate for 127.0.0.1 (``loopback_ca``), a client certificate from
    that CA, and one from elsewhere (made with the openssl command line)."""
    folder = tmp_path_factory.mktemp("pki")
    for name in ("ca.pem", "ca.key", "server.pem", "server.key"):
        shutil.copy(loopback_ca / name, folder / name)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=30)

    openssl("req", *key, "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=client")
    openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "client.pem", "-days", "2")
    openssl("req", "-x509", *key, "-keyout", "stranger.key", "-out", "stranger.pem", "-days", "2",
            "-subj", "/CN=stranger")
    (folder / "client-with-key.pem").write_text((folder / "client.pem").read_text()
                                                + (folder / "client.key").read_text())
    (folder / "not-pem.txt").write_text("this is not a certificate\n")
    return folder


# ---------------------------------------------------------------------------------------------- the simulator


def start(app, ssl_context=None) -> tuple[str, object]:
    httpd = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=ssl_context)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    scheme = "https" if ssl_context is not None else "http"
    return f"{scheme}://127.0.0.1:{httpd.server_port}", httpd


def simulator(tmp_path_factory, **config):
    db = tmp_path_factory.mktemp("payer") / "payer.db"
    app = create_payer_app({"PAYER_DATABASE_URL": f"sqlite:///{db}", "PAYER_WORKER": False, **config})
    store = app.extensions["payer_store"]
    store.submit("create", DELGADO["memberid"], DELGADO["groupnumber"], DELGADO)
    store.process_pending()
    return app


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """The simulator requiring USER/PASSWORD (and a second account) on its 270 endpoints, on loopback."""
    app = simulator(tmp_path_factory, PAYER_ACCOUNTS={USER: PASSWORD, "other": "another-password"})
    base, httpd = start(app)
    yield base
    httpd.shutdown()
    app.extensions["payer_store"].close()


def serve_mutual_tls(tmp_path_factory, pki: Path, maximum: ssl.TLSVersion):
    """The (open) simulator behind TLS that requires a client certificate from the test CA."""
    app = simulator(tmp_path_factory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.maximum_version = maximum
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    context.load_verify_locations(pki / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    base, httpd = start(app, context)
    yield base
    httpd.shutdown()
    app.extensions["payer_store"].close()


@pytest.fixture(scope="module")
def mutual_tls(tmp_path_factory, pki):
    yield from serve_mutual_tls(tmp_path_factory, pki, ssl.TLSVersion.MAXIMUM_SUPPORTED)


@pytest.fixture(scope="module")
def mutual_tls12(tmp_path_factory, pki):
    """TLS 1.2 checks the client certificate inside the handshake, so the server's alert always arrives (with
    TLS 1.3 it comes after the client has started sending and may be lost to a reset)."""
    yield from serve_mutual_tls(tmp_path_factory, pki, ssl.TLSVersion.TLSv1_2)


class RecordingSession(CountingSession):
    """A real session that keeps the keyword arguments of every request (to see what reached requests)."""

    def __init__(self) -> None:
        super().__init__()
        self.kwargs: list[dict] = []

    def request(self, *args, **kwargs):  # type: ignore[override]
        self.kwargs.append(kwargs)
        return super().request(*args, **kwargs)


# ------------------------------------------------------------------------------------------ the routing table


def test_credentials_are_read_from_the_environment_and_kept_out_of_repr():
    route = routes({"P": {"url": "https://p.example/core", **login()}}).route("P")
    assert (route.username, route.password, route.password_env) == (USER, PASSWORD, "GW_PAYER_PASSWORD")
    assert (route.tls_cert, route.tls_verify) == (None, None)   # the session's trust store
    no_secret_in(repr(route))
    no_secret_in(str(route))


def test_a_missing_or_empty_password_variable_names_the_payer_and_the_variable():
    text = problems({"P": {"url": "https://p.example/core", **login("GW_NOT_SET")}})
    assert "payers.P.password_env: environment variable GW_NOT_SET is not set or is empty" in text
    text = problems({"P": {"url": "https://p.example/core", **login("GW_EMPTY")}}, environ={"GW_EMPTY": ""})
    assert "payers.P.password_env: environment variable GW_EMPTY" in text
    text = problems({"P": {"url": "https://p.example/core"}}, **login("GW_NOT_SET"))
    assert "defaults.password_env: environment variable GW_NOT_SET" in text


def test_user_name_and_password_env_go_together():
    text = problems({"A": {"url": "https://a.example/", "username": USER},
                     "B": {"url": "https://b.example/", "password_env": "GW_PAYER_PASSWORD"},
                     "C": {"url": "https://c.example/", "username": "", "password_env": "GW_PAYER_PASSWORD"}})
    assert "payers.A.username: needs password_env beside it" in text
    assert "payers.B.password_env: needs username beside it" in text
    assert "payers.C.username: 1-256 printable characters" in text


def test_a_password_written_into_the_table_is_never_echoed():
    # the secret itself in password_env, or under an unknown key: refused without quoting it
    text = problems({"A": {"url": "https://a.example/", "username": USER, "password_env": PASSWORD},
                     "B": {"url": "https://b.example/", "password": PASSWORD}})
    assert "payers.A.password_env: must be the NAME of an environment variable" in text
    assert "payers.B.password: unknown key" in text
    no_secret_in(text)


def test_a_password_with_control_characters_is_refused_without_quoting_it():
    text = problems({"P": {"url": "https://p.example/", **login("GW_NEWLINE")}}, environ={"GW_NEWLINE": "pass\n"})
    assert "payers.P.password_env: the password in environment variable GW_NEWLINE" in text
    assert "pass\n" not in text


def test_a_colon_in_the_user_name_is_refused_for_http_basic_only():
    payers = {"X": {"url": "https://x.example/", "transport": "x12", "username": "a:b",
                    "password_env": "GW_PAYER_PASSWORD"},
              "S": {"url": "https://s.example/", "transport": "soap", "username": "a:b",
                    "password_env": "GW_PAYER_PASSWORD"}}
    text = problems(payers)
    assert "payers.X.username: HTTP Basic" in text and "payers.S" not in text


def test_certificate_paths_are_checked_at_load_time(pki, tmp_path):
    text = problems({"A": {"url": "https://a.example/", "client_cert": "missing.pem"},
                     "B": {"url": "https://b.example/", "client_cert": str(pki / "client.pem"),
                           "client_key": str(tmp_path)},           # a folder is not a key file
                     "C": {"url": "https://c.example/", "ca_bundle": str(pki / "nope" / "ca.pem")},
                     "D": {"url": "https://d.example/", "client_key": str(pki / "client.key")},
                     "E": {"url": "https://e.example/", "client_cert": 42}}, folder=tmp_path)
    assert f"payers.A.client_cert: cannot read {tmp_path / 'missing.pem'}" in text
    assert "payers.B.client_key: cannot read" in text
    assert "payers.C.ca_bundle: cannot read" in text
    assert "payers.D.client_key: needs client_cert beside it" in text
    assert "payers.E.client_cert: must be a file path" in text


def test_certificate_contents_are_checked_at_load_time(pki):
    text = problems({"A": {"url": "https://a.example/", "client_cert": "not-pem.txt"},
                     "B": {"url": "https://b.example/", "client_cert": "client.pem", "client_key": "stranger.key"},
                     "C": {"url": "https://c.example/", "client_cert": "client.pem"},     # no key in that file
                     "D": {"url": "https://d.example/", "ca_bundle": "not-pem.txt"}}, folder=pki)
    for payer in "ABC":
        assert f"payers.{payer}.client_cert: not a PEM certificate with its unencrypted PEM private key" in text
    assert "payers.D.ca_bundle: holds no PEM CA certificate" in text


def test_a_client_certificate_needs_https(pki):
    text = problems({"A": {"url": "http://a.example/core", "client_cert": "client-with-key.pem"}}, folder=pki)
    assert "payers.A.client_cert: a client certificate needs an https url, not 'http://a.example/core'" in text
    text = problems({"A": {"url": "http://a.example/core"}}, folder=pki, client_cert="client-with-key.pem")
    assert "payers.A.client_cert: a client certificate needs an https url" in text and "(set in defaults)" in text


def test_relative_paths_start_at_the_routing_files_folder(pki, monkeypatch):
    (pki / "routing.yaml").write_text(json.dumps(table({"P": {
        "url": "https://p.example/core", "transport": "mime", "client_cert": "client.pem",
        "client_key": "client.key", "ca_bundle": "ca.pem", **login()}})))
    monkeypatch.setenv("FHIR_X12_ROUTING", str(pki / "routing.yaml"))
    monkeypatch.setenv("GW_PAYER_PASSWORD", PASSWORD)
    monkeypatch.chdir(pki.parent)
    route = routes_from_config().route("P")
    assert route.tls_cert == (str(pki / "client.pem"), str(pki / "client.key"))
    assert route.tls_verify == str(pki / "ca.pem") and route.password == PASSWORD


def test_defaults_are_inherited_but_a_payers_own_certificate_brings_its_own_key(pki):
    table_routes = routes({"A": {"url": "https://a.example/"},
                           "B": {"url": "https://b.example/", "client_cert": "client-with-key.pem"},
                           "C": {"url": "https://c.example/", "username": "c-user",
                                 "password_env": "GW_WRONG_PASSWORD"}},
                          folder=pki, client_cert="client.pem", client_key="client.key", ca_bundle="ca.pem",
                          **login())
    a, b, c = (table_routes.route(p) for p in "ABC")
    assert a.tls_cert == (str(pki / "client.pem"), str(pki / "client.key")) and a.username == USER
    assert b.tls_cert == str(pki / "client-with-key.pem")       # not the defaults' key
    assert (c.username, c.password) == ("c-user", WRONG) and c.tls_verify == str(pki / "ca.pem")


def test_load_errors_and_logs_never_hold_the_password(caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(MappingError) as caught:
        routes({"P": {"url": "ftp://p.example/", **login()}, "Q": {"url": "https://q.example/", **login("NOPE")}})
    no_secret_in(str(caught.value))
    no_secret_in(repr(caught.value))
    no_secret_in(caplog.text)


# ------------------------------------------------------------------------------------------------- the client


@pytest.mark.parametrize("transport", ["soap", "mime", "x12"])
def test_the_right_credentials_get_a_271_over_each_transport(guarded, transport, caplog):
    caplog.set_level(logging.DEBUG)
    client = PayerClient(routes({"P": {"url": guarded + ENDPOINTS[transport], "transport": transport, **login()}}))
    answer = client.send("P", REQUEST, trace=TRACE)
    assert GOOD_EB in answer.x12 and answer.attempts == 1
    no_secret_in(caplog.text)


@pytest.mark.parametrize("transport", ["soap", "mime", "x12"])
@pytest.mark.parametrize("credentials", ["wrong", "none"])
def test_refused_credentials_are_a_security_error_sent_once_and_the_breaker_stays_closed(guarded, transport,
                                                                                        credentials, caplog):
    caplog.set_level(logging.DEBUG)
    settings = login("GW_WRONG_PASSWORD") if credentials == "wrong" else {}
    session = CountingSession()
    client = PayerClient(routes({"P": {"url": guarded + ENDPOINTS[transport], "transport": transport,
                                       "retries": 3, "backoff_seconds": 0, "breaker": {"failures": 1,
                                                                                       "reset_seconds": 60},
                                       **settings}}), session=session)
    for calls in (1, 2):   # the second call goes out too: the breaker (1 failure opens it) did not open
        with pytest.raises(PayerUnauthorized) as caught:
            client.send("P", REQUEST, trace=TRACE)
        assert session.calls == calls
    error = caught.value
    assert error.http_status == 502 and error.issue_code == "security" and error.attempts == 1
    assert error.to_operation_outcome()["issue"][0]["code"] == "security"
    assert "refused the gateway's credentials" in error.diagnostics
    if transport == "x12":
        assert error.status == 401
    else:
        assert error.core_error_code == core.UNAUTHORIZED
    assert client.breaker(client.routes.route("P")).state == "closed"
    for text in (str(error), repr(error), json.dumps(error.to_operation_outcome()), caplog.text):
        no_secret_in(text)
        assert WRONG not in text
    assert USER not in error.diagnostics


def test_the_override_sends_its_own_credentials_never_a_listed_payers(guarded):
    """FHIR_X12_PAYER_URL is another endpoint: a listed payer's password (kept for its own host) never goes
    there; every payer id gets the defaults' credentials, which belong to the override."""
    other = {"GW_PAYER_PASSWORD": PASSWORD, "GW_LISTED_PASSWORD": "listed-payers-own-secret"}
    listed = {"LISTED": {"url": "https://listed.example/x12", "transport": "x12", "username": "listeduser",
                         "password_env": "GW_LISTED_PASSWORD"}}
    table_routes = routes(listed, override=guarded + "/core/soap", environ=other, **login())
    route = table_routes.route("LISTED")
    assert (route.url, route.username, route.password) == (guarded + "/core/soap", USER, PASSWORD)
    client = PayerClient(table_routes)
    assert GOOD_EB in client.send("LISTED", REQUEST, trace=TRACE).x12
    assert GOOD_EB in client.send("ANYONE", REQUEST, trace=TRACE).x12
    without_defaults = PayerClient(routes(listed, override=guarded + "/core/soap", environ=other))
    assert without_defaults.routes.route("LISTED").password is None
    with pytest.raises(PayerUnauthorized):   # no credentials of the override's own: none are sent
        without_defaults.send("LISTED", REQUEST, trace=TRACE)


@pytest.mark.parametrize(("url", "ok"), [
    ("http://payer.example/core", False), ("https://payer.example/core", True), ("http://127.0.0.1:8090/core", True),
    ("http://localhost:8090/core", True), ("http://[::1]:8090/core", True), ("http://10.0.0.5/core", False)])
def test_a_password_only_travels_over_https_or_to_loopback(url: str, ok: bool):
    payers = {"P": {"url": url, **login()}}
    if ok:
        assert routes(payers).route("P").password == PASSWORD
    else:
        with pytest.raises(MappingError, match=r"payers\.P\.username: a password only travels over https"):
            routes(payers)


def test_an_http_override_with_the_defaults_credentials_is_refused():
    with pytest.raises(MappingError, match=r"FHIR_X12_PAYER_URL\.username: .*\(set in defaults\)"):
        routes({}, override="http://clearinghouse.example/core/soap", **login())
    assert routes({}, override="http://127.0.0.1:8090/core/soap", **login()).route("X").password == PASSWORD


@pytest.mark.parametrize(("transport", "status", "body", "content_type"), [
    ("soap", 200, core_error_envelope(core.UNAUTHORIZED, f"user {USER} not accepted"), core.SOAP_CONTENT_TYPE),
    ("soap", 401, core_error_envelope(core.UNAUTHORIZED, "no"), core.SOAP_CONTENT_TYPE),
    ("soap", 500, core.soap_fault("FailedAuthentication", "The security token could not be authenticated"),
     core.SOAP_CONTENT_TYPE),
    ("soap", 403, b"<html>Forbidden</html>", "text/html"),
    ("mime", 401, b"", "text/plain"),
    ("x12", 401, b"Unauthorized", "text/plain"),
    ("x12", 403, b"", "text/plain"),
])
def test_every_way_of_refusing_credentials_is_a_security_error(transport, status, body, content_type):
    session = CannedSession(status, body, content_type)
    client = PayerClient(routes({"P": {"url": "https://payer.example/core", "transport": transport,
                                       "retries": 2, "backoff_seconds": 0}}), session=session)
    with pytest.raises(PayerUnauthorized) as caught:
        client.send("P", REQUEST, trace=TRACE)
    assert caught.value.issue_code == "security" and caught.value.http_status == 502
    assert session.calls == 1
    assert USER not in caught.value.diagnostics   # the payer's own message is not quoted


def test_other_core_errors_and_http_errors_stay_unavailable():
    session = CannedSession(200, core_error_envelope(), core.SOAP_CONTENT_TYPE)
    client = PayerClient(routes({"P": {"url": "https://payer.example/core"}}), session=session)
    with pytest.raises(PayerUnavailable):
        client.send("P", REQUEST, trace=TRACE)


def test_a_tls_alert_against_our_certificate_is_a_security_error():
    alert = requests.exceptions.SSLError("[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca (_ssl.c:1006)")
    route = routes({"P": {"url": "https://payer.example/core"}}).route("P")
    assert isinstance(_request_failure(alert, route, (3, 15)), PayerUnauthorized)
    verify = requests.exceptions.SSLError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    assert isinstance(_request_failure(verify, route, (3, 15)), PayerUnavailable)


def test_the_new_error_is_a_payer_error_with_a_fhir_issue_type_and_a_kind():
    error = PayerUnauthorized("CORE ErrorCode UnAuthorized")
    assert isinstance(error, PayerError) and isinstance(error, GatewayError)
    assert error.issue_code in ISSUE_TYPES and error.issue_code == "security" and error.http_status == 502
    assert _KINDS["PayerUnauthorized"] == "unauthorized"


# ------------------------------------------------------------------------------------------------ mutual TLS


def test_certificate_settings_reach_every_http_call(mutual_tls, pki):
    session = RecordingSession()
    table_routes = routes({"P": {"url": mutual_tls + "/core/soap", "client_cert": "client.pem",
                                 "client_key": "client.key", "ca_bundle": "ca.pem"}}, folder=pki)
    answer = PayerClient(table_routes, session=session).send("P", REQUEST, trace=TRACE)
    assert GOOD_EB in answer.x12
    sent, = session.kwargs
    assert sent["cert"] == (str(pki / "client.pem"), str(pki / "client.key"))
    assert sent["verify"] == str(pki / "ca.pem")


@pytest.mark.parametrize("transport", ["soap", "x12"])
def test_mutual_tls_with_a_certificate_in_one_file(mutual_tls, pki, transport):
    table_routes = routes({"P": {"url": mutual_tls + ENDPOINTS[transport], "transport": transport,
                                 "client_cert": "client-with-key.pem", "ca_bundle": "ca.pem"}}, folder=pki)
    assert GOOD_EB in PayerClient(table_routes).send("P", REQUEST, trace=TRACE).x12


def test_a_certificate_the_payer_does_not_trust_is_a_security_error(mutual_tls12, pki):
    session = CountingSession()
    client = PayerClient(routes({"P": {"url": mutual_tls12 + "/core/soap", "client_cert": "stranger.pem",
                                       "client_key": "stranger.key", "ca_bundle": "ca.pem",
                                       "breaker": {"failures": 1, "reset_seconds": 60}}}, folder=pki),
                         session=session)
    with pytest.raises(PayerUnauthorized) as caught:
        client.send("P", REQUEST, trace=TRACE)
    assert caught.value.issue_code == "security" and session.calls == 1
    assert client.breaker(client.routes.route("P")).state == "closed"


def test_no_certificate_or_an_untrusted_server_fails_without_a_retry(mutual_tls, pki):
    # without a client certificate (or with one the payer does not trust) a TLS 1.3 server's refusal may arrive
    # as a bare EOF: nothing says why, so that stays the existing TLS failure; not trusting the server's
    # certificate is one too. Either way: one attempt, no retry.
    for settings in ({"ca_bundle": "ca.pem"}, {"client_cert": "client-with-key.pem"},
                     {"client_cert": "stranger.pem", "client_key": "stranger.key", "ca_bundle": "ca.pem"}):
        session = CountingSession()
        client = PayerClient(routes({"P": {"url": mutual_tls + "/core/soap", **settings}}, folder=pki),
                             session=session)
        with pytest.raises((PayerUnavailable, PayerUnauthorized)):
            client.send("P", REQUEST, trace=TRACE)
        assert session.calls == 1


# --------------------------------------------------------------------------------------------- the simulator


def test_the_simulator_answers_the_core_unauthorized_envelope(guarded):
    env = core.CoreEnvelope.create(core.PAYLOAD_270, REQUEST, sender_id="GW", receiver_id="ACME01",
                                   username=USER, password=WRONG)
    response = requests.post(guarded + "/core/soap", data=core.build_soap_request(env),
                             headers={"Content-Type": core.SOAP_CONTENT_TYPE}, timeout=10)
    reply = core.parse_soap_response(response.content)
    assert reply.error_code == core.UNAUTHORIZED and reply.payload is None
    assert reply.payload_id == env.payload_id and WRONG.encode() not in response.content
    body, content_type = core.build_mime_request(core.CoreEnvelope.create(core.PAYLOAD_270, REQUEST,
                                                                          sender_id="GW", receiver_id="ACME01"))
    response = requests.post(guarded + "/core/mime", data=body, headers={"Content-Type": content_type}, timeout=10)
    reply = core.parse_mime_response(response.content, response.headers["Content-Type"])
    assert reply.error_code == core.UNAUTHORIZED and reply.payload is None


def test_the_simulator_asks_for_http_basic_on_raw_x12(guarded):
    response = requests.post(guarded + "/x12", data=REQUEST, timeout=10)
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Basic ")
    response = requests.post(guarded + "/x12", data=REQUEST, auth=("other", "another-password"), timeout=10)
    assert response.status_code == 200 and GOOD_EB in response.text
    assert requests.get(guarded + "/scenarios", timeout=10).status_code == 200   # only 270s need credentials


def test_parse_accounts():
    assert parse_accounts("a:1, b:with:colons") == {"a": "1", "b": "with:colons"}
    for bad, number in (("a", 1), ("a:", 1), (":x", 1), ("a:1,,b:2", 2), (f"a:{PASSWORD},a:{PASSWORD}", 2)):
        with pytest.raises(ValueError, match=f"entry {number} ") as caught:
            parse_accounts(bad)
        no_secret_in(str(caught.value))


def test_payer_serve_reads_accounts_from_the_environment_only(monkeypatch):
    runner = CliRunner()
    monkeypatch.delenv("SIM_ACCOUNTS", raising=False)
    result = runner.invoke(main, ["payer", "serve", "--accounts-env", "SIM_ACCOUNTS"])
    assert result.exit_code == 2 and "SIM_ACCOUNTS" in result.output and "not set" in result.output
    monkeypatch.setenv("SIM_ACCOUNTS", f"{USER}:{PASSWORD},broken")
    result = runner.invoke(main, ["payer", "serve", "--accounts-env", "SIM_ACCOUNTS"])
    assert result.exit_code == 2 and "entry 2 is not user:password" in result.output
    no_secret_in(result.output)


def test_the_simulator_refuses_an_empty_accounts_table(tmp_path):
    with pytest.raises(ValueError, match="PAYER_ACCOUNTS"):
        create_payer_app({"PAYER_DATABASE_URL": f"sqlite:///{tmp_path / 'p.db'}", "PAYER_WORKER": False,
                          "PAYER_ACCOUNTS": {}})


def test_route_is_still_a_plain_frozen_value():
    route = Route(payer_id="P", url="https://p.example/", transport="soap", sender_id="S", receiver_id="R",
                  username=USER, password=PASSWORD)
    with pytest.raises(AttributeError):
        route.password = "x"  # type: ignore[misc]
    no_secret_in(repr(route))


# ------------------------------------------------------------------------------------------------- the gateway


def test_the_gateway_answers_a_refusal_with_security_and_sends_with_credentials(guarded, tmp_path, monkeypatch):
    from gateway.app import create_app
    from tests.conftest import FIXTURES

    token = "t" * 32
    request = (FIXTURES / "fhir" / "requests" / "subscriber-generic.json").read_bytes()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    routing = tmp_path / "routing.yaml"
    routing.write_text(json.dumps(table({}, transport="soap", **login())))
    monkeypatch.setenv("GW_PAYER_PASSWORD", PASSWORD)
    for routing_file, status in ((None, 502), (str(routing), 200)):
        config = {"TESTING": True, "FHIR_X12_DATABASE_URL": f"sqlite:///{tmp_path / 'gateway.db'}",
                  "FHIR_X12_PAYER_URL": guarded + "/core/soap", "FHIR_X12_TOKENS": token}
        if routing_file:
            config["FHIR_X12_ROUTING"] = routing_file
        app = create_app(config)
        try:
            response = app.test_client().post("/CoverageEligibilityRequest/$submit", data=request, headers=headers)
        finally:
            app.extensions["fhir_x12"]["close"]()
        assert response.status_code == status, response.get_data(as_text=True)[:500]
        body = response.get_json()
        if status == 502:
            assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "security"
            no_secret_in(response.get_data(as_text=True))
        else:
            assert body["resourceType"] == "CoverageEligibilityResponse"


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory, pki):
    """The (open) simulator behind TLS with a certificate from the test CA, asking no client certificate."""
    app = simulator(tmp_path_factory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    base, httpd = start(app, context)
    yield base
    httpd.shutdown()
    app.extensions["payer_store"].close()


def test_a_payer_without_ca_bundle_is_verified_against_the_sessions_trust_store(server_tls, pki, monkeypatch, caplog):
    """No ca_bundle: requests' store (the test CA is not in it: refused, and the log says why); REQUESTS_CA_BUNDLE
    is that store when set, proxies or not; a bundle that cannot be read stops the start."""
    for key in [k for k in os.environ if k.lower().endswith("_proxy")]:
        monkeypatch.delenv(key)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    table = routes({"P": {"url": server_tls + "/core/soap"}})
    with caplog.at_level("WARNING", logger="gateway.transport.client"), pytest.raises(PayerUnavailable):
        PayerClient(table).send("P", REQUEST, trace=TRACE)
    assert any("CERTIFICATE_VERIFY_FAILED" in r.getMessage() for r in caplog.records)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki / "ca.pem"))
    assert GOOD_EB in PayerClient(table).send("P", REQUEST, trace=TRACE).x12
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki / "missing.pem"))
    with pytest.raises(ConfigError, match="REQUESTS_CA_BUNDLE"):
        PayerClient(table)
