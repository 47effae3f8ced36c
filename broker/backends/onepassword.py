"""The ``onepassword_connect`` backend: a 1Password Connect server's REST API
(``/v1/vaults``, ``/v1/vaults/{id}/items``), bearer token from ``token_env``.

A rule's ``path`` is ``VAULT/ITEM`` and its ``field`` a field label (or id;
``SECTION.LABEL`` picks the field of that label in that section). A vault
or item segment that looks like a 1Password id (26 lower-case letters and
digits) is used as the id; anything else is looked up by name (vaults) or
title (items) with Connect's SCIM filters. A name that matches several
vaults, items or field labels is refused rather than guessed.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from broker.backends.base import BackendError, SecretNotFound
from broker.backends.rest import Answer, BearerBackend, status_error, text
from broker.secret import SecretValue

_ID_RE = re.compile(r"^[a-z0-9]{26}$")


class OnePasswordConnect(BearerBackend):
    """A :class:`broker.backends.base.Backend` over one Connect server."""

    def read(self, path: str, field: str) -> SecretValue:
        where = f"onepassword_connect backend {self.name!r} ({path})"
        vault, _, item = path.partition("/")
        if not vault or not item:
            raise SecretNotFound(f"{where}: path must be VAULT/ITEM")
        vault_id = vault if _ID_RE.match(vault) else self._find(where, "/v1/vaults", "name", vault)
        base = f"/v1/vaults/{quote(vault_id, safe='')}/items"
        item_id = item if _ID_RE.match(item) else self._find(where, base, "title", item)
        full = self._get(where, f"{base}/{quote(item_id, safe='')}", f"item {item!r}")
        return _field(full, field, where)

    # -- requests ----------------------------------------------------------------

    def _get(self, where: str, url: str, what: str, filter_: str | None = None) -> object:
        answer = self._send(
            where, "GET", url,
            headers=self._bearer(),
            params={"filter": filter_} if filter_ else None,
        )  # fmt: skip
        if 200 <= answer.status < 300:
            return answer.body
        raise self._map_error(answer, where, what)

    def _find(self, where: str, url: str, attr: str, name: str) -> str:
        """The id of the one vault (``attr`` name) or item (title) called ``name``."""
        what = f"{'vault' if attr == 'name' else 'item'} {name!r}"
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        found = self._get(where, url, what, f'{attr} eq "{escaped}"')
        if not isinstance(found, list):
            raise BackendError(f"{where}: malformed answer (expected a list)")
        ids = [text(o.get("id")) for o in found if isinstance(o, dict) and o.get(attr) == name]
        if not ids:
            raise SecretNotFound(f"{where}: no {what}")
        if len(ids) > 1 or ids[0] is None:
            raise SecretNotFound(f"{where}: {len(ids)} of {what}; use its id")
        return ids[0]

    def _map_error(self, answer: Answer, where: str, what: str) -> BackendError:
        """Connect's error statuses: 401 bad token, 403 no access, 404 missing."""
        if answer.status == 404:
            return SecretNotFound(f"{where}: no {what}")
        return status_error(answer.status, where, self._token_env)


def _field(item: object, label: str, where: str) -> SecretValue:
    if not isinstance(item, dict) or not isinstance(item.get("fields", []), list):
        raise BackendError(f"{where}: malformed answer (no item object)")
    fields = [f for f in item.get("fields", []) if isinstance(f, dict)]
    matches = [f for f in fields if f.get("label") == label] or [
        f for f in fields if f.get("id") == label
    ]
    section, _, short = label.rpartition(".")
    if not matches and section:  # "SECTION.LABEL", as in op://vault/item/section/field
        ids = {s.get("id") for s in item.get("sections") or () if isinstance(s, dict)
               and section in (s.get("label"), s.get("id"))}  # fmt: skip
        matches = [
            f for f in fields
            if f.get("label") == short and isinstance(f.get("section"), dict)
            and f["section"].get("id") in ids
        ]  # fmt: skip
    if not matches:
        raise SecretNotFound(f"{where}: no field labelled {label!r}")
    if len(matches) > 1:
        raise SecretNotFound(
            f"{where}: {len(matches)} fields labelled {label!r}; use SECTION.LABEL or its id"
        )
    value = text(matches[0].get("value"))
    if value is None:
        raise SecretNotFound(f"{where}: field {label!r} is empty or not a string")
    version = item.get("version")
    ok = isinstance(version, int) and not isinstance(version, bool)
    return SecretValue(value, version=str(version) if ok else None)
