"""Who may read and act in the console and the API.

With no users (``web.users``, ``web.users_file``) there is no sign-in: reading is open and
writes take the API's bearer token (``web.api_token``), for scripts. With users, people sign in at
``/login`` (argon2 password hashes, verified by argon2-cffi) to a session in a signed
cookie (HttpOnly, SameSite=Strict, Secure behind https); reading then needs a session unless
``web.anonymous_read``, and writes need the operator or admin role (or the bearer token).
Every unsafe request of a session carries its CSRF token: the Dash renderer sends the
``_csrf_token`` cookie back as the ``X-CSRFToken`` header, the login form as a field.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import secrets
import threading
import time
from datetime import timedelta
from html import escape
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import Flask, jsonify, redirect, request, session

from aidc.core.config import ConfigError, User, Web, load_users
from aidc.core.files import private_file

log = logging.getLogger("aidc.auth")
ROLES = {"viewer": 0, "operator": 1, "admin": 2}
WRITER = "operator"  # the least role that acknowledges and silences
CSRF_COOKIE, CSRF_HEADER = "_csrf_token", "X-CSRFToken"
SESSION_HOURS = 12  # a shift
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
OPEN_PATHS = ("/login", "/healthz", "/metrics", "/_dash-component-suites/", "/assets/")
USERS_FILE_CHECK_S = 1.0  # how often the users file is looked at for a change
HASHER = PasswordHasher()


@functools.cache
def _nobody() -> str:
    """The hash an unknown name is verified against: made on the first sign-in (100 ms of
    argon2, which every `aidc run` and test paid at import)."""
    return HASHER.hash(secrets.token_hex(16))


def hash_password(password: str) -> str:
    return HASHER.hash(password)


class Auth:
    def __init__(self, web: Web, api_token: str | None = None, data_dir: Path | None = None):
        self._site_users = {u.name: u for u in web.users}
        self._users_file = web.users_file
        self._users = self._site_users  # with the users file's, as last read
        self._file_seen: tuple | None = None  # the users file's (inode, mtime, size) last read
        self._file_checked_at = -USERS_FILE_CHECK_S
        self._file_lock = threading.Lock()
        self.api_token = api_token
        self.anonymous_read = web.anonymous_read
        self.secure = bool(web.external_url and web.external_url.startswith("https://"))
        self._secret = (web.session_secret.get_secret_value() if web.session_secret
                        else _secret_in(data_dir) if data_dir else secrets.token_hex(32))

    @property
    def enabled(self) -> bool:
        """Sign-in is on with any user configured, or a users file: one that cannot be read
        keeps it on (closed), never opens the console."""
        return bool(self._site_users or self._users_file)

    @property
    def users(self) -> dict[str, User]:
        """The site file's users and the users file's, as last read: the file is looked at
        once a second at most, and read again when it changed. A file that no longer loads
        keeps the users last read (a half-saved edit locks no one out), and says why."""
        if self._users_file and time.monotonic() - self._file_checked_at >= USERS_FILE_CHECK_S:
            with self._file_lock:
                self._file_checked_at = time.monotonic()
                self._read_users_file()
        return self._users

    def _read_users_file(self) -> None:
        try:
            st = os.stat(self._users_file)
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            seen = None
        if seen == self._file_seen:
            return
        self._file_seen = seen
        try:
            users = load_users(self._users_file, set(self._site_users))
        except ConfigError as e:
            log.error("event=users_file_refused kept=%d error=%s",
                      len(self._users) - len(self._site_users), e)
            return
        self._users = self._site_users | {u.name: u for u in users}
        log.info("event=users_file_read users=%d file=%s", len(users), self._users_file)

    def verify(self, name: str, password: str) -> User | None:
        """The user if the password is theirs; an unknown name costs the same hash (the first
        sign-in, of any name, also makes the unknown names' hash)."""
        nobody = _nobody()
        user = self.users.get(name)
        try:
            HASHER.verify(user.password_hash.get_secret_value() if user else nobody, password)
        except (VerificationError, InvalidHashError):
            return None
        return user

    def token_ok(self, token) -> bool:
        return (isinstance(token, str) and self.api_token is not None
                and hmac.compare_digest(token.encode(), self.api_token.encode()))

    def bearer_ok(self) -> bool:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme == "Bearer" and self.token_ok(given)

    def user(self) -> tuple[str, str] | None:
        """(name, role) of the request's session, if it has one of a user still configured."""
        name = session.get("user")
        user = self.users.get(name) if isinstance(name, str) else None
        return (user.name, user.role) if user else None

    def may_write(self, token=None, name: str | None = None) -> tuple[str | None, str | None]:
        """Whether this request may acknowledge or silence: (who, None), ``who`` being the
        signed-in operator, or ``name`` when the API ``token`` is given instead (a script's
        bearer token, or the token typed in the page); else (None, why not)."""
        if (u := self.user()) and ROLES[u[1]] >= ROLES[WRITER]:
            return u[0], None
        if not (self.api_token or self.enabled):
            return None, "write actions are disabled (set web.api_token in the site file)"
        if self.token_ok(token):
            return name, None
        if u:
            return None, f"{u[0]} is a {u[1]}; acknowledging and silencing need an operator"
        return None, "missing or wrong API token"

    def install(self, app: Flask) -> None:
        app.secret_key = self._secret
        # the cookie is sent only when sign-in or sign-out changes it: re-sent on every
        # request (Flask's default for a permanent session), a page refresh still in flight
        # when the user signs out would put the old session back in the browser
        app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
                          SESSION_COOKIE_SECURE=self.secure, SESSION_REFRESH_EACH_REQUEST=False,
                          PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS))
        app.before_request(self._guard)
        app.add_url_rule("/login", "login", self._login, methods=["GET", "POST"])
        app.add_url_rule("/logout", "logout", self._logout, methods=["POST"])
        # 204 while the page may still read, 401 once not (the console then goes to /login)
        app.add_url_rule("/_session", "session_check", lambda: ("", 204))

    def _guard(self):
        """Reads need a session (with users, unless anonymous); a session's unsafe request
        needs its CSRF token."""
        path = request.path
        if (self.enabled and not path.startswith(OPEN_PATHS)
                and not (self.anonymous_read or self.user() or self.bearer_ok())):
            if path.startswith(("/api/", "/_dash", "/_session")):
                return jsonify({"error": "sign in at /login, or send the bearer token"}), 401
            return redirect(f"/login?next={path}")
        if request.method in UNSAFE and "user" in session and not self.bearer_ok():
            given = request.headers.get(CSRF_HEADER) or request.form.get("csrf", "")
            if not hmac.compare_digest(given.encode(), session.get("csrf", "").encode()):
                return jsonify({"error": "missing or wrong CSRF token: reload the page"}), 403
        return None

    def _login(self):
        if not self.enabled:
            return redirect("/")
        target = request.args.get("next", "/")
        target = target if target.startswith("/") and not target.startswith("//") else "/"
        message = ""
        if request.method == "POST":
            if not hmac.compare_digest(request.form.get("csrf", "").encode(),
                                       session.get("login_csrf", "").encode()):
                message = "The form expired: try again."
            elif user := self.verify(request.form.get("name", ""), request.form.get("password", "")):
                session.clear()
                session.permanent = True
                session.update(user=user.name, csrf=secrets.token_urlsafe(24))
                log.info("event=signed_in user=%s role=%s", user.name, user.role)
                response = redirect(target)
                response.set_cookie(CSRF_COOKIE, session["csrf"], samesite="Strict",
                                    secure=self.secure)  # read by the page's scripts
                return response
            else:
                log.info("event=sign_in_refused user=%s", request.form.get("name", "")[:100])
                message = "Wrong name or password."
        # one token per session, not per form: the browser's own requests (its favicon) would
        # otherwise render a new form behind the one on screen
        session.setdefault("login_csrf", secrets.token_urlsafe(24))
        return LOGIN_PAGE.format(csrf=session["login_csrf"], next=escape(target),
                                 message=escape(message))

    def _logout(self):
        if (u := self.user()) is not None:
            log.info("event=signed_out user=%s", u[0])
        session.clear()
        response = redirect("/login")
        response.delete_cookie(CSRF_COOKIE)
        return response


def _secret_in(data_dir: Path) -> str:
    """The data directory's session key (made once, readable by its owner only), so that
    sessions outlive a restart."""
    path = data_dir / "session-key"
    if not path.exists():
        private_file(path, secrets.token_hex(32) + "\n")
    return path.read_text().strip()


LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>aidc: sign in</title>
<style>body{{font-family:system-ui,sans-serif;background:#f6f8fa}}form{{max-width:320px;
margin:12vh auto;padding:24px;background:#fff;border:1px solid #d0d7de;border-radius:8px}}
input{{display:block;width:100%;margin:6px 0 14px;padding:6px;box-sizing:border-box}}
.msg{{color:#cf222e}}</style></head><body>
<form method="post" action="/login?next={next}"><h2>aidc</h2><p class="msg">{message}</p>
<input type="hidden" name="csrf" value="{csrf}">
<label>Name<input name="name" id="login-name" autocomplete="username" required></label>
<label>Password<input name="password" id="login-password" type="password"
 autocomplete="current-password" required></label>
<button type="submit" id="login-submit">Sign in</button></form></body></html>"""
