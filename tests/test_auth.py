"""Sign-in and roles on a live site with users: who reads, who acts, and what a forged or
cross-site request gets. Over real HTTP to the app's own server, cookies as a browser keeps
them."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from flask import Flask

from aidc.api import SiteAPI
from aidc.auth import CSRF_COOKIE, CSRF_HEADER, Auth, hash_password
from aidc.core.config import User, Web
from aidc.core.net import free_port
from aidc.http import register_routes
from aidc.web import WebServer
from tests.conftest import API_TOKEN, start_live_site, wait_for

PASSWORDS = {"vera": "viewer-password-1", "olga": "operator-password-1",
             "uma": "operator-password-2"}


def users_yaml(*names: str, role: str = "operator") -> str:
    return "users:\n" + "".join(f"  - {{name: {n}, role: {role}, password_hash: "
                                f"'{hash_password(PASSWORDS[n])}'}}\n" for n in names)


@pytest.fixture(scope="module")
def signed_site(tmp_path_factory):
    """vera (viewer) in the site file, olga (operator) in a users file beside it."""
    folder = tmp_path_factory.mktemp("auth")
    users_file = folder / "users.yaml"
    users_file.write_text(users_yaml("olga"))
    vera = User(name="vera", role="viewer", password_hash=hash_password(PASSWORDS["vera"]))
    live = start_live_site(folder / "data", users=[vera], users_file=str(users_file))
    live.call(live.simulated.stop_device("pdu-b02-b"))  # an alert to act on
    server = WebServer(SiteAPI(live.runtime), port=free_port(), api_token=API_TOKEN)
    server.start()
    yield live, server
    server.stop()
    live.stop()


def client(server) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=10, follow_redirects=False)


def try_sign_in(server, name: str, target: str = "/alerts"):
    """(client, answer) when ``name`` signs in with her password, else None."""
    c = client(server)
    csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
    r = c.post(f"/login?next={target}", data={"csrf": csrf, "name": name,
                                              "password": PASSWORDS[name]})
    return (c, r) if r.status_code == 302 else None


def sign_in(server, name: str) -> tuple[httpx.Client, httpx.Response]:
    signed_in = try_sign_in(server, name)
    assert signed_in is not None, f"{name} was refused"
    c, r = signed_in
    assert r.headers["location"] == "/alerts", r.text[:200]
    return c, r


def an_alert(live) -> str:
    """The dark PDU's alert, once it fires."""
    return wait_for(lambda: [a["fingerprint"] for a in SiteAPI(live.runtime).alerts()
                             if a["labels"].get("device") == "pdu-b02-b"
                             and a["state"] in ("firing", "suppressed")],
                    what="pdu-b02-b's alert firing")[0]


def test_without_a_session_nothing_is_read(signed_site):
    _, server = signed_site
    c = client(server)
    assert c.get("/api/v1/site").status_code == 401
    assert c.post("/_dash-update-component", json={}).status_code == 401
    page = c.get("/floor")
    assert (page.status_code, page.headers["location"]) == (302, "/login?next=/floor")
    assert c.get("/healthz").status_code == 200  # probes and scrapes stay open
    assert c.get("/login").status_code == 200
    # the API's bearer token stays for scripts
    assert c.get("/api/v1/site", headers={"Authorization": f"Bearer {API_TOKEN}"}).json()[
        "site"] == "demo"


def test_anonymous_reading_opens_reads_and_never_writes(signed_site):
    """web.anonymous_read: the API and the console read without signing in; every write
    still needs a role or the token."""
    live, _ = signed_site
    app = Flask("anonymous")
    vera = User(name="vera", role="viewer", password_hash=hash_password(PASSWORDS["vera"]))
    register_routes(app, SiteAPI(live.runtime), Auth(Web(users=[vera], anonymous_read=True),
                                                       API_TOKEN))
    c = app.test_client()
    assert c.get("/api/v1/site").get_json()["site"] == "demo"
    assert c.get("/api/v1/racks").status_code == 200
    silence = {"matchers": ["device=nowhere"], "duration_s": 60, "created_by": "anon",
               "comment": "x"}
    assert c.post("/api/v1/silences", json=silence).status_code == 401
    assert c.post("/api/v1/alerts/x/ack", json={"by": "anon"}).status_code == 401
    closed = Flask("closed")
    register_routes(closed, SiteAPI(live.runtime), Auth(Web(users=[vera]), API_TOKEN))
    assert closed.test_client().get("/api/v1/site").status_code == 401  # the default


def test_a_wrong_password_or_a_forged_form_signs_nobody_in(signed_site):
    _, server = signed_site
    c = client(server)
    csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
    wrong = c.post("/login", data={"csrf": csrf, "name": "olga", "password": "guess"})
    assert "Wrong name or password." in wrong.text
    nobody = c.post("/login", data={"csrf": csrf, "name": "mallory", "password": "guess"})
    assert "Wrong name or password." in nobody.text  # the same words for a name not known
    forged = client(server).post("/login", data={"csrf": "x", "name": "olga",
                                                 "password": PASSWORDS["olga"]})
    assert "The form expired" in forged.text  # no token from this server's form
    assert c.get("/api/v1/site").status_code == 401


def test_a_viewer_reads_and_is_refused_a_write_with_403(signed_site):
    live, server = signed_site
    c, signed_in = sign_in(server, "vera")
    cookies = {h.split("=", 1)[0]: h for h in signed_in.headers.get_list("set-cookie")}
    # the session out of the page's scripts' reach; the CSRF token for them to send back
    assert "; HttpOnly" in cookies["session"] and "; SameSite=Strict" in cookies["session"]
    assert "HttpOnly" not in cookies[CSRF_COOKIE] and "; SameSite=Strict" in cookies[CSRF_COOKIE]
    read = c.get("/api/v1/site")
    assert read.json()["site"] == "demo"
    # only signing in and out send the cookie: a read answered after a sign-out (a page's
    # refresh in flight) must not put the old session back in the browser
    assert "set-cookie" not in read.headers
    fingerprint = an_alert(live)
    r = c.post(f"/api/v1/alerts/{fingerprint}/ack", json={"by": "vera"},
               headers={CSRF_HEADER: c.cookies[CSRF_COOKIE]})
    assert r.status_code == 403 and "vera is a viewer" in r.json()["error"]
    assert [a["acked_by"] for a in SiteAPI(live.runtime).alerts()] == [None]


def test_an_operator_acts_as_herself_and_only_with_the_csrf_token(signed_site):
    _, server = signed_site
    c, _ = sign_in(server, "olga")
    body = {"matchers": ["device=pdu-b02-b"], "duration_s": 600, "created_by": "mallory",
            "comment": "swap"}
    no_token = c.post("/api/v1/silences", json=body)
    assert no_token.status_code == 403 and "CSRF" in no_token.json()["error"]
    done = c.post("/api/v1/silences", json=body, headers={CSRF_HEADER: c.cookies[CSRF_COOKIE]})
    assert done.status_code == 201 and done.json()["created_by"] == "olga"  # not the body's
    expired = c.request("DELETE", f"/api/v1/silences/{done.json()['id']}", json={"by": "x"},
                        headers={CSRF_HEADER: c.cookies[CSRF_COOKIE]})
    assert (expired.status_code, expired.json()["expired_by"]) == (200, "olga")
    signed_out = c.post("/logout", headers={CSRF_HEADER: c.cookies[CSRF_COOKIE]})
    assert signed_out.headers["location"] == "/login"
    assert c.get("/api/v1/site").status_code == 401


def test_sign_in_never_sends_anyone_off_site(signed_site):
    _, server = signed_site
    c = client(server)
    csrf = re.search(r'name="csrf" value="([^"]+)"', c.get("/login").text).group(1)
    r = c.post("/login?next=//evil.example/x", data={"csrf": csrf, "name": "vera",
                                                     "password": PASSWORDS["vera"]})
    assert r.headers["location"] == "/"


def test_the_users_file_is_read_again_when_it_changes_and_a_broken_one_keeps_its_users(
        signed_site, caplog):
    live, server = signed_site
    users_file = Path(live.site.web.users_file)
    kept = users_file.read_text()
    try:
        users_file.write_text(users_yaml("olga", "uma"))  # uma added: no restart
        uma, _ = wait_for(lambda: try_sign_in(server, "uma"), what="uma signing in")
        # a half-saved edit: refused with its line, uma and olga still sign in
        users_file.write_text(kept + "  - {name: uma, role: operator, password_hash: 'x'}\n"
                              + "  - name: [\n")
        wait_for(lambda: uma.get("/api/v1/site").status_code == 200  # the file is read on use
                 and "event=users_file_refused" in caplog.text, what="the refusal logged")
        assert f"{users_file}:5: not valid YAML" in caplog.text, caplog.text
        assert try_sign_in(server, "olga") is not None
        # uma removed: her session ends at once, the site file's viewer stays
        users_file.write_text(users_yaml("olga"))
        wait_for(lambda: uma.get("/api/v1/site").status_code == 401, what="uma's session ending")
        assert try_sign_in(server, "uma") is None and try_sign_in(server, "vera") is not None
    finally:
        users_file.write_text(kept)


def test_hash_password_reads_the_password_from_stdin_never_argv():
    import subprocess
    import sys

    from aidc.auth import HASHER

    def run(password: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "aidc.cli", "hash-password"], check=False,
                              input=password + "\n", capture_output=True, text=True, timeout=60)

    out = run("correct horse battery")
    assert out.returncode == 0 and HASHER.verify(out.stdout.strip(), "correct horse battery")
    short = run("short")
    assert short.returncode != 0 and short.stderr == "error: a password needs at least 12 characters\n"


def test_in_the_browser_an_operator_signs_in_acknowledges_and_signs_out(dash_duo, signed_site):
    live, server = signed_site
    fingerprint = an_alert(live)
    driver = dash_duo.driver
    driver.get(server.url + "alerts")  # to the form first, and back after it

    def sign_in_as(name: str) -> None:
        dash_duo.wait_for_element("#login-name", timeout=20).send_keys(name)
        dash_duo.find_element("#login-password").send_keys(PASSWORDS[name])
        dash_duo.find_element("#login-submit").click()
        role = {"vera": "viewer", "olga": "operator"}[name]
        dash_duo.wait_for_text_to_equal("#signed-in-as", f"{name} ({role})", timeout=20)

    def act(button: str, expected: str) -> str:
        dash_duo.find_element(button).click()
        return wait_for(lambda: (t := dash_duo.find_element("#action-result").text)
                        .startswith(expected) and t, what=expected)

    def select_the_alert() -> None:
        wait_for(lambda: dash_duo.find_elements("#alerts-table tbody tr input[type=radio]"),
                 what="the alert listed")
        dash_duo.find_element("#alerts-table tbody tr input[type=radio]").click()

    sign_in_as("vera")
    select_the_alert()
    assert act("#ack-selected", "Refused") == (
        "Refused: vera is a viewer; acknowledging and silencing need an operator.")
    assert dash_duo.get_logs() == []  # as vera: no error in the browser's console
    dash_duo.find_element("#sign-out").click()
    sign_in_as("olga")  # signing out led back to the form
    dash_duo.get_logs()  # what leaving the page cut short (its refreshes in flight) is no error
    driver.get(server.url + "alerts")
    select_the_alert()
    assert act("#ack-selected", "Acknowledged") == "Acknowledged device_unreachable by olga."
    acked = {a["fingerprint"]: a["acked_by"] for a in SiteAPI(live.runtime).alerts()}
    assert acked[fingerprint] == "olga"
    assert dash_duo.get_logs() == []
    # the session ends (expired, or signed out elsewhere): the page leaves for the form
    # rather than freeze on old numbers
    driver.delete_cookie("session")
    wait_for(lambda: driver.current_url.endswith("/login?next=%2Falerts"), 30,
             "the page gone to the sign-in form, to come back to the alerts")
