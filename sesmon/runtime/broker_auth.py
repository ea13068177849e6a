"""Broker accounts: a mosquitto password file, an ACL and ``credentials.csv`` from the registry.

Why: an open broker let any client publish as any device, publish fake alerts, or take over
the ingest bridge's persistent session. ``sesmon mqtt credentials`` gives every device, firm,
inspector, operator and stage its own account (usernames and roles: ``sesmon/contract/identity.py``),
and an ACL that lets each write only its own topics. Mosquitto runs with
``use_username_as_clientid true``, so a client id is its username and nobody can take over
another account's session without its password.

Passwords are hashed the way mosquitto 2.0 does (``$7$``: PBKDF2-SHA512, 101 iterations),
so no ``mosquitto_passwd`` binary is needed. Re-running keeps existing passwords.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sesmon.contract.identity import INSPECTOR, OPERATOR, STAGE_USERS, firm_username, principal_of
from sesmon.contract.registry import Registry, Unit

CSV_COLUMNS = ["username", "password", "role", "device_id"]
PBKDF2_ITERATIONS = 101  # mosquitto 2.0's own default for $7$ hashes


@dataclass(frozen=True)
class Account:
    username: str
    password: str
    role: str
    device_id: str = ""


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    """A ``$7$`` password hash exactly as mosquitto 2.0 reads it."""
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS, 64)
    return f"$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_hash(password: str, hashed: str) -> bool:
    _, kind, iterations, salt_b64, digest_b64 = hashed.split("$")
    if kind != "7":
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt_b64), int(iterations), 64)
    return secrets.compare_digest(digest, base64.b64decode(digest_b64))


def accounts_for(
    units: Iterable[Unit], existing: dict[str, str] | None = None, operators: int = 1
) -> list[Account]:
    """Every account the fleet needs; a password already issued is kept.

    ``operators``: centre desks, each with its own account (``operator``, ``operator-2``, …),
    because a client id is its username and a second login on one account takes the first's session.
    """
    existing = existing or {}

    def account(username: str, role: str, device_id: str = "") -> Account:
        password = existing.get(username) or secrets.token_urlsafe(18)
        return Account(username, password, role, device_id)

    units = list(units)
    out = [account(name, role) for name, role in STAGE_USERS.items()]
    out += [account(OPERATOR, "operator"), account(INSPECTOR, "inspector")]
    out += [account(f"{OPERATOR}-{n}", "operator") for n in range(2, operators + 1)]
    for firm_id in sorted({u.firm_id for u in units if u.firm_id}):
        out.append(account(firm_username(firm_id), "firm"))
    for unit in units:
        if principal_of(unit.device_id).role != "device":
            raise ValueError(f"device id {unit.device_id!r} would read as another role's username")
        out.append(account(unit.device_id, "device", unit.device_id))
    return out


def acl_text(accounts: Iterable[Account], kinds: dict[str, str]) -> str:
    """Mosquitto ACL: each account may write only its own topics (read: what it must see)."""
    lines = ["# written by `sesmon mqtt credentials`: regenerate, do not edit", ""]
    for acc in accounts:
        lines.append(f"user {acc.username}")
        if acc.role == "device":
            kind = kinds[acc.device_id]
            lines += [
                f"topic write sesmon/v1/{kind}/{acc.device_id}/#",
                f"topic write gbt24476/v1/{acc.device_id}/#",
            ]
        elif acc.role == "ingest":
            # sesmon/probe/: the MQTT session's own delivery probe (ingest/mqtt_session.py)
            lines += ["topic read sesmon/v1/#", "topic read gbt24476/v1/#", "topic readwrite sesmon/probe/#"]
        elif acc.role == "alerts":
            lines += ["topic write sesmon/v1/alerts/#", "topic write sesmon/v1/hazards/#"]
        elif acc.role == "firm":
            firm_id = principal_of(acc.username).id
            lines += [
                f"topic read sesmon/v1/alerts/firm/{firm_id}",
                f"topic read sesmon/v1/hazards/firm/{firm_id}",
            ]
        elif acc.role in ("operator", "inspector"):
            lines += ["topic read sesmon/v1/alerts/#", "topic read sesmon/v1/hazards/#"]
        if acc.role in ("firm", "operator", "inspector"):
            lines += [
                f"topic write sesmon/v1/reports/+/{acc.username}",
                f"topic write sesmon/v1/dispatch/+/{acc.username}",
            ]
        lines.append("")
    return "\n".join(lines)


@dataclass
class BrokerCredentials:
    """The files of a secured broker and the accounts in them."""

    out_dir: Path
    accounts: dict[str, Account] = field(default_factory=dict)

    @property
    def passwd(self) -> Path:
        return self.out_dir / "passwd"

    @property
    def acl(self) -> Path:
        return self.out_dir / "acl"

    @property
    def csv(self) -> Path:
        return self.out_dir / "credentials.csv"

    def password(self, username: str) -> str:
        return self.accounts[username].password

    def env_for(self, username: str) -> dict[str, str]:
        """Settings for a stage that logs in as ``username``."""
        return {"SESMON_MQTT_USERNAME": username, "SESMON_MQTT_PASSWORD": self.password(username)}


def read_credentials_csv(path: Path) -> dict[str, Account]:
    if not path.exists():
        return {}
    with path.open(newline="", encoding="utf-8") as fh:
        return {
            r["username"]: Account(r["username"], r["password"], r["role"], r["device_id"])
            for r in csv.DictReader(fh)
        }


def _write_private(path: Path, text: str) -> None:
    """Written 0600: the broker runs as the same user here (``user root`` in its config)."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_credentials(registry: Registry, out_dir: Path, operators: int = 1) -> BrokerCredentials:
    """Write ``passwd``, ``acl`` and ``credentials.csv`` under ``out_dir`` (kept passwords kept)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    creds = BrokerCredentials(out_dir)
    existing = {u: a.password for u, a in read_credentials_csv(creds.csv).items()}
    units = list(registry)
    accounts = accounts_for(units, existing, operators)
    creds.accounts = {a.username: a for a in accounts}
    _write_private(creds.passwd, "".join(f"{a.username}:{mosquitto_hash(a.password)}\n" for a in accounts))
    _write_private(creds.acl, acl_text(accounts, {u.device_id: str(u.kind) for u in units}))
    rows = [",".join(CSV_COLUMNS)] + [f"{a.username},{a.password},{a.role},{a.device_id}" for a in accounts]
    _write_private(creds.csv, "\n".join(rows) + "\n")
    return creds


def load_credentials(out_dir: Path) -> BrokerCredentials:
    creds = BrokerCredentials(out_dir)
    creds.accounts = read_credentials_csv(creds.csv)
    return creds
