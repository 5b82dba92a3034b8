"""Resolve references inside one payload: contained resources first, then Bundle entries.

References to servers outside the payload are the web layer's job (it fetches them and hands a
complete Bundle in); here they are reported as unresolvable, one by one.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.errors import quoted, with_article
from gateway.translate.errors import Problem

# FHIR's literal reference grammar, the one place it is written (the upstream fetcher builds on it too)
RESOURCE_TYPE = r"[A-Z][A-Za-z]{1,63}"
RESOURCE_ID = r"[A-Za-z0-9\-.]{1,64}"
# a relative literal reference: Type/id (a version too), which a Bundle entry's absolute fullUrl gives a base; use
# fullmatch (groups: type, id, version)
RELATIVE_REFERENCE = re.compile(rf"(?P<type>{RESOURCE_TYPE})/(?P<id>{RESOURCE_ID})"
                                rf"(?:/_history/(?P<version>{RESOURCE_ID}))?")
# a literal reference or fullUrl: an optional absolute base, Type/id and an optional version
_LITERAL = re.compile(rf"(?P<base>https?://[^?#]+/)?{RELATIVE_REFERENCE.pattern}")


class Resolver:
    """Finds the resource a Reference points at, recording each one that cannot be found.

    A reference equal to an entry's fullUrl is that entry. An absolute reference is only the entry with the same
    URL (version aside), never an entry of another server with the same ``Type/id``. A relative ``Type/id`` is,
    first, the entry at that URL on the server of the entry holding it (FHIR's rule for an absolute fullUrl),
    else the entry whose resource is that ``Type/id`` (clients write ``Patient/123`` beside a ``urn:`` or another
    base's fullUrl; it is their own payload). A version (``/_history/v``) must be the entry's own, when the entry
    says which: another version is not what was asked for.
    """

    def __init__(self, root: dict[str, Any], bundle: dict[str, Any] | None = None) -> None:
        self.root = root
        self.contained = {c.get("id"): c for c in root.get("contained") or [] if isinstance(c, dict)}
        self.exact: dict[str, dict[str, Any]] = {}
        self.absolute: dict[tuple[str, str, str], tuple[dict[str, Any], str | None]] = {}
        self.local: dict[tuple[str, str], tuple[dict[str, Any], str | None]] = {}
        self.bases: dict[int, str] = {}   # id() of an entry's resource -> the server base of its absolute fullUrl
        for entry in (bundle or {}).get("entry") or []:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict):
                continue
            url = entry.get("fullUrl")
            literal = _LITERAL.fullmatch(url) if isinstance(url, str) else None
            if isinstance(url, str) and url:
                self.exact.setdefault(url, resource)
            if literal is not None and literal["base"]:
                key = (literal["base"], literal["type"], literal["id"])
                self.absolute.setdefault(key, (resource, literal["version"]))
                self.bases.setdefault(id(resource), literal["base"])
            if literal is not None:
                self.local.setdefault((literal["type"], literal["id"]), (resource, literal["version"]))
            if isinstance(resource.get("resourceType"), str) and isinstance(resource.get("id"), str):
                self.local.setdefault((resource["resourceType"], resource["id"]), (resource, None))
        self.problems: list[Problem] = []

    def base_of(self, resource: dict[str, Any] | None) -> str | None:
        """The server base a resource's relative references mean: its entry's, when that fullUrl is absolute."""
        return self.bases.get(id(resource if resource is not None else self.root))

    def find(self, ref: str, owner: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The resource ``ref`` names in the payload, or None. ``owner``: the resource holding the reference."""
        if ref.startswith("#"):
            contained = {c.get("id"): c for c in (owner or self.root).get("contained") or [] if isinstance(c, dict)}
            return contained.get(ref[1:]) or self.contained.get(ref[1:])
        if ref in self.exact:
            return self.exact[ref]
        literal = _LITERAL.fullmatch(ref)
        if literal is None:
            return None
        kind, id, version = literal["type"], literal["id"], literal["version"]
        base = literal["base"] or self.base_of(owner)
        found = self.absolute.get((base, kind, id)) if base else None
        if found is None and not literal["base"]:
            found = self.local.get((kind, id))
        if found is None:
            return None
        resource, entry_version = found
        meta = resource.get("meta")
        entry_version = entry_version or (meta.get("versionId") if isinstance(meta, dict) else None)
        if version and entry_version and version != entry_version:
            return None   # another version of it: not what was asked for
        return resource

    def resolve(self, reference: Any, path: str, expected: tuple[str, ...], x12: str | None = None,
                owner: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The resource, or None (a problem is recorded unless the reference is identifier-only)."""
        if not isinstance(reference, dict):
            return None
        ref = reference.get("reference")
        if not ref or not isinstance(ref, str):
            return None
        resource = self.find(ref, owner)
        if resource is None:
            self.problems.append(Problem(path, f"reference {quoted(ref)} cannot be resolved: it is neither contained "
                                         "nor an entry of the Bundle", code="not-found", x12=x12))
            return None
        if expected and resource.get("resourceType") not in expected:
            self.problems.append(Problem(path, f"reference {quoted(ref)} points at "
                                         f"{with_article(str(resource.get('resourceType')))}, "
                                         f"expected {' or '.join(expected)}", code="invalid", x12=x12))
            return None
        return resource


FETCHED_FOR = " fetched for "   # the words naming the reference a resource read from the EHR's server was read for


def fetched_for(kind: str, reference: str) -> str:
    """What a refusal adds for a resource the client did not send (read from the EHR's FHIR server): the reference it
    was read for. One wording, which the API's rewriting of paths (api/fhir.py ``_issue_from``) finds again."""
    return f" (in the {kind}{FETCHED_FOR}{reference}: the request did not hold it)"


def sent_at(request: dict[str, Any], bundle: dict[str, Any] | None) -> dict[int, str]:
    """Where the client sent each resource of its payload, by ``id()`` of the resource: the FHIRPath a refusal names it
    from, so that one answer has one root. A Bundle entry's resource is ``Bundle.entry[i].resource`` (the request's
    too, when it came in a Bundle, as the structural check says it) and what it contains ``....contained[j]``; a request
    sent alone is ``CoverageEligibilityRequest``, its contained resources ``CoverageEligibilityRequest.contained[i]``.
    A resource not found here was not sent by the client: it came from the EHR's FHIR server. Walked only when a
    refusal is being written."""
    places: dict[int, str] = {}

    def add(resource: dict[str, Any], where: str) -> None:
        places.setdefault(id(resource), where)
        contained = resource.get("contained")
        for index, inner in enumerate(contained if isinstance(contained, list) else []):
            if isinstance(inner, dict):
                places.setdefault(id(inner), f"{where}.contained[{index}]")

    entries = (bundle or {}).get("entry")
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
            add(entry["resource"], f"Bundle.entry[{index}].resource")
    add(request, str(request.get("resourceType") or "Resource"))   # sent alone (in a Bundle, placed above)
    return places


def bundle_local(bundle: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The entries whose fullUrl means nothing once the Bundle is gone, by fullUrl: ``urn:`` ids, and relative
    ones (``Patient/4f1e...``, as Canvas sends: the receiving server's, and this gateway keeps no Patients).
    Entries at an absolute URL are the sender's server's resources and stay references."""
    return {e["fullUrl"]: e["resource"] for e in (bundle or {}).get("entry") or []
            if isinstance(e, dict) and isinstance(e.get("fullUrl"), str) and e["fullUrl"]
            and not e["fullUrl"].startswith(("http://", "https://")) and isinstance(e.get("resource"), dict)}


def contain_local_references(resource: dict[str, Any], bundle: dict[str, Any] | None) -> dict[str, Any]:
    """``resource`` standing on its own: what it references by a Bundle-local fullUrl (:func:`bundle_local`) is
    copied into ``contained`` and referenced as ``#id`` instead, the resources they reference so in turn as well.
    References to servers (absolute URLs, or ``Type/id`` no entry holds under that fullUrl) stay as they are."""
    if bundle is None:
        return resource
    by_url = {url: found for url, found in bundle_local(bundle).items()
              if found.get("resourceType") != resource.get("resourceType")}   # never itself
    if not by_url:
        return resource
    contained: list[dict[str, Any]] = [c for c in resource.get("contained") or [] if isinstance(c, dict)]
    taken = {c.get("id") for c in contained}
    local: dict[str, str] = {}   # urn -> its id in contained

    def rewrite(value: Any) -> Any:
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        if not isinstance(value, dict):
            return value
        out = {k: rewrite(v) for k, v in value.items() if k != "contained"}
        ref = value.get("reference")
        if isinstance(ref, str) and ref in by_url:
            out["reference"] = f"#{contain(ref)}"
        return out

    def contain(url: str) -> str:
        if url not in local:
            target = by_url[url]
            id = target.get("id") if isinstance(target.get("id"), str) and target.get("id") not in taken else None
            id = id or next(f"c{n}" for n in range(1, len(taken) + 2) if f"c{n}" not in taken)
            local[url] = id   # before its own references are followed: two resources may point at each other
            taken.add(id)
            slot = len(contained)
            contained.append({})
            copy = {**rewrite(target), "id": id}   # a contained resource contains none of its own (dom-2)
            copy.pop("meta", None)
            contained[slot] = copy
        return local[url]

    result = {k: rewrite(v) for k, v in resource.items() if k != "contained"}
    if not contained:
        return result if resource.get("contained") is None else {**result, "contained": resource["contained"]}
    ordered = {k: result[k] for k in ("resourceType", "id", "meta", "text") if k in result}
    return {**ordered, "contained": contained, **{k: v for k, v in result.items() if k not in ordered}}


def bundle_base(resource_type: str, bundle: dict[str, Any] | None) -> str | None:
    """``https://ehr.example/fhir/`` when the entry holding the ``resource_type`` has an absolute fullUrl
    (``.../CoverageEligibilityRequest/x``): the base its relative references resolve against; else None."""
    for entry in (bundle or {}).get("entry") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        url = entry.get("fullUrl")
        if entry["resource"].get("resourceType") == resource_type and isinstance(url, str) \
                and url.startswith(("https://", "http://")) and f"/{resource_type}/" in url:
            return url[:url.rindex(f"/{resource_type}/") + 1]
    return None


def absolute_references(value: Any, base: str | None) -> Any:
    """``value`` with each relative ``Type/id`` reference written out against ``base`` (FHIR Bundle rules: inside
    an entry with an absolute fullUrl they mean that server's resources, not this gateway's)."""
    if base is None:
        return value
    if isinstance(value, list):
        return [absolute_references(v, base) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: absolute_references(v, base) for k, v in value.items()}
    ref = value.get("reference")
    if isinstance(ref, str) and RELATIVE_REFERENCE.fullmatch(ref):
        out["reference"] = base + ref
    return out
