"""The fallback policy against real endpoints that fail in real ways."""

from __future__ import annotations

import http.server
import threading

import pytest
import requests

from bundler.context import RetryPolicy
from bundler.errors import InputError, IntegrityError, NetworkError
from bundler.net.endpoints import (
    MISMATCH,
    NOT_FOUND,
    REFUSED,
    SERVER_ERROR,
    TIMEOUT,
    Attempt,
    EndpointError,
    Fallback,
    endpoints_failed,
    http_error,
)
from bundler.net.http import ca_bundle, new_session
from testbed import services
from testbed.policy import FAST_RETRY


def fetch(url: str) -> bytes:
    response = new_session().get(url, timeout=FAST_RETRY.timeout)
    if response.status_code != 200:
        raise http_error(response)
    return response.content


def test_falls_back_past_refused_500_404_and_slow_to_the_good_one(index, faulty):
    files = index.url.removesuffix("/simple")
    endpoints = [services.refusing_url(), faulty(files, "500").url, faulty(files, "404").url,
                 faulty(files, "slow", delay=3).url, files]
    sleeps: list[float] = []
    fallback = Fallback(FAST_RETRY, sleep=sleeps.append)
    data = fallback.run("fetching beta", endpoints, lambda e: fetch(f"{e}/files/beta-1.0-py3-none-any.whl"))
    assert data.startswith(b"PK")
    # the 500 and the timeout were retried once each (FAST_RETRY.attempts == 2), with backoff
    assert sleeps == [FAST_RETRY.pause(0), FAST_RETRY.pause(0)]


def test_all_failed_lists_every_attempt_on_one_line(index, faulty):
    files = index.url.removesuffix("/simple")
    refused, broken = services.refusing_url(), faulty(files, "500").url
    with pytest.raises(NetworkError) as caught:
        Fallback(FAST_RETRY, sleep=lambda s: None).run(
            "fetching beta-1.0", [refused, broken], lambda e: fetch(f"{e}/files/beta-1.0-py3-none-any.whl"))
    message = str(caught.value)
    assert message.startswith("fetching beta-1.0: every endpoint failed: ")
    assert f"{refused}: {REFUSED}" in message
    assert message.count(f"{broken}: HTTP 500") == 1 and f"{broken}: HTTP 500 Internal Server Error (2 tries)" in message
    assert "\n" not in message


def test_classification_of_each_failure(index, faulty):
    files = index.url.removesuffix("/simple")
    kinds = {}
    for name, url in {"refused": services.refusing_url(), "500": faulty(files, "500").url,
                      "404": faulty(files, "404").url, "slow": faulty(files, "slow", delay=3).url}.items():
        fallback = Fallback(RetryPolicy(connect_timeout=1, read_timeout=1, attempts=1), sleep=lambda s: None)
        try:
            fallback.run("x", [url], lambda e: fetch(f"{e}/files/beta-1.0-py3-none-any.whl"))
        except (NetworkError, InputError) as exc:
            kinds[name] = str(exc).split(": ", 3)[-1]
    assert kinds == {"refused": REFUSED, "500": "HTTP 500 Internal Server Error",
                     "404": "HTTP 404 Not Found", "slow": TIMEOUT}


def test_endpoint_is_skipped_for_the_rest_of_the_run_after_repeated_failures(index):
    refused = services.refusing_url()
    files = index.url.removesuffix("/simple")
    calls: list[str] = []

    def operation(endpoint: str) -> bytes:
        calls.append(endpoint)
        return fetch(f"{endpoint}/files/beta-1.0-py3-none-any.whl")

    fallback = Fallback(FAST_RETRY, sleep=lambda s: None)
    for _ in range(FAST_RETRY.skip_after + 2):
        fallback.run("x", [refused, files], operation)
    assert calls.count(refused) == FAST_RETRY.skip_after
    assert fallback.skipped(refused) and not fallback.skipped(files)


def test_not_found_everywhere_is_bad_input_and_does_not_condemn_the_endpoint(index):
    files = index.url.removesuffix("/simple")
    fallback = Fallback(FAST_RETRY, sleep=lambda s: None)
    for _ in range(FAST_RETRY.skip_after + 1):
        with pytest.raises(InputError, match="not found on any endpoint"):
            fallback.run("fetching nothing", [files], lambda e: fetch(f"{e}/files/none.whl"))
    assert not fallback.skipped(files)


def test_digest_mismatch_everywhere_is_an_integrity_error():
    def lying(endpoint: str) -> bytes:
        raise EndpointError(MISMATCH, "sha256 is 00.., expected ff..")

    with pytest.raises(IntegrityError, match="every endpoint failed: a: sha256 is 00"):
        Fallback(FAST_RETRY, sleep=lambda s: None).run("fetching blob", ["a", "b"], lying)


def test_foreign_errors_pass_through():
    def broken(endpoint: str) -> bytes:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        Fallback(FAST_RETRY).run("x", ["a"], broken)


def test_proxy_variables_are_honoured(monkeypatch):
    seen: list[str] = []

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "9")
            self.end_headers()
            self.wfile.write(b"via proxy")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        assert new_session().get("http://mirror.invalid/simple/", timeout=5).text == "via proxy"
        assert seen == ["http://mirror.invalid/simple/"]
    finally:
        server.shutdown()
        server.server_close()


def test_custom_ca_bundle_is_honoured(monkeypatch, tmp_path):
    """A mirror behind a company CA: trusted through SSL_CERT_FILE / REQUESTS_CA_BUNDLE, refused without."""
    cert = services.self_signed_tls(tmp_path)
    server = services.https_server(tmp_path, b"through TLS")
    url = f"https://127.0.0.1:{server.server_address[1]}/"
    try:
        with pytest.raises(requests.exceptions.SSLError):
            new_session().get(url, timeout=5)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        assert ca_bundle() == str(cert)
        assert new_session().get(url, timeout=5).content == b"through TLS"
        monkeypatch.delenv("SSL_CERT_FILE")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
        assert new_session().get(url, timeout=5).content == b"through TLS"
    finally:
        server.shutdown()
        server.server_close()


def test_http_error_kinds():
    response = requests.Response()
    response.status_code, response.reason = 503, "Service Unavailable"
    assert http_error(response).kind == SERVER_ERROR
    response.status_code = 404
    assert http_error(response).kind == NOT_FOUND


def test_a_dead_mirror_is_named_once_per_run_with_how_to_stop_trying_a_built_in_one(index):
    from bundler.build.mirrors import CATALOG_REVIEWED, CatalogFallback, user_mirrors_file
    from bundler.net.endpoints import ORIGIN_BUILTIN, Endpoint
    notes: list[str] = []
    fallback = CatalogFallback(FAST_RETRY, note=notes.append)   # the connected side's: it knows the catalog
    dead, good = Endpoint(services.refusing_url(), ORIGIN_BUILTIN), Endpoint(index.url, ORIGIN_BUILTIN)
    for project in ("alpha", "beta", "native", "winhelper"):
        page = fallback.run(f"reading {project}", [dead, good], lambda e, p=project: fetch(f"{e.url}/{p}/"))
        assert project in page.decode()
    assert notes == [f"reading alpha: {dead.url}: connection refused; served by {good.url}; not repeated this run "
                     f"({dead.url}: from the built-in list, reviewed {CATALOG_REVIEWED}; a list of your own in "
                     f"{user_mirrors_file()} or --mirrors FILE stops trying it)"]


def test_a_build_names_a_dead_mirror_of_its_own_list_once(index, tmp_path, capsys):
    from bundler import cli
    from conftest import write_profile
    dead = services.refusing_url()
    profile = write_profile(tmp_path, "localhost:5000", [], index.url, ["alpha==1.0", "native==1.0"])
    profile.write_text(profile.read_text().replace(f"pypi: [{index.url}]", f"pypi: [{dead}/simple, {index.url}]"))
    assert cli.main(["build", "--no-restorer", str(profile), "-o", str(tmp_path / "b.tar.zst"), "--cache", str(tmp_path / "c")]) == 0
    err = capsys.readouterr().err
    assert err.count(dead) == 1, err
    assert "from the built-in list" not in err


def test_a_failure_retried_is_said_once_with_its_count():
    attempts = [Attempt("https://hf-mirror.com", "refused", "Name or service not known")] * 3 + \
        [Attempt("official", "refused", "Name or service not known")] * 2 + [Attempt("official", "timeout", "slow")]
    message = str(endpoints_failed("listing x", attempts))
    assert message == ("listing x: every endpoint failed: https://hf-mirror.com: Name or service not known (3 tries); "
                       "official: Name or service not known (2 tries); official: slow")
