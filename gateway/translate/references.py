"""Resolve references inside one payload: contained resources first, then Bundle entries.

References to servers outside the payload are the web layer's job (it fetches them and hands a
complete Bundle in); here they are reported as unresolvable, one by one.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.translate.errors import Problem

# a relative literal reference: Type/id (a version too), which a Bundle entry's absolute fullUrl gives a base
_RELATIVE = re.compile(r"[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?")


class Resolver:
    """Finds the resource a Reference points at, recording each one that cannot be found."""

    def __init__(self, root: dict[str, Any], bundle: dict[str, Any] | None = None) -> None:
        self.root = root
        self.contained = {c.get("id"): c for c in root.get("contained") or [] if isinstance(c, dict)}
        self.by_url: dict[str, dict[str, Any]] = {}
        if bundle is not None:
            for entry in bundle.get("entry") or []:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if not isinstance(resource, dict):
                    continue
                if entry.get("fullUrl"):
                    self.by_url[entry["fullUrl"]] = resource
                    if "/" in entry["fullUrl"] and not entry["fullUrl"].startswith("urn:"):
                        tail = "/".join(entry["fullUrl"].rstrip("/").split("/")[-2:])
                        self.by_url.setdefault(tail, resource)
                if resource.get("resourceType") and resource.get("id"):
                    self.by_url.setdefault(f"{resource['resourceType']}/{resource['id']}", resource)
        self.problems: list[Problem] = []

    def resolve(self, reference: Any, path: str, expected: tuple[str, ...], x12: str | None = None,
                owner: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The resource, or None (a problem is recorded unless the reference is identifier-only)."""
        if not isinstance(reference, dict):
            return None
        ref = reference.get("reference")
        if not ref:
            return None
        resource = None
        if ref.startswith("#"):
            contained = {c.get("id"): c for c in (owner or self.root).get("contained") or []}
            resource = contained.get(ref[1:]) or self.contained.get(ref[1:])
        else:
            resource = self.by_url.get(ref)
            if resource is None and "/" in ref:
                resource = self.by_url.get("/".join(ref.rstrip("/").split("/")[-2:]))
        if resource is None:
            self.problems.append(Problem(path, f"reference {ref!r} cannot be resolved: it is neither contained nor "
                                         "an entry of the Bundle", code="not-found", x12=x12))
            return None
        if expected and resource.get("resourceType") not in expected:
            self.problems.append(Problem(path, f"reference {ref!r} points at a {resource.get('resourceType')}, "
                                         f"expected {' or '.join(expected)}", code="invalid", x12=x12))
            return None
        return resource


def contain_local_references(resource: dict[str, Any], bundle: dict[str, Any] | None) -> dict[str, Any]:
    """``resource`` standing on its own: what it references by ``urn:`` (a Bundle-local id that resolves nowhere
    once the Bundle is gone) is copied into ``contained`` and referenced as ``#id`` instead, the resources it
    references by ``urn:`` in turn as well. References to servers (``Type/id``, URLs) are left as they are."""
    if bundle is None:
        return resource
    by_url = {e["fullUrl"]: e["resource"] for e in bundle.get("entry") or []
              if isinstance(e, dict) and isinstance(e.get("fullUrl"), str) and e["fullUrl"].startswith("urn:")
              and isinstance(e.get("resource"), dict)
              and e["resource"].get("resourceType") != resource.get("resourceType")}   # never itself
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
    if isinstance(ref, str) and _RELATIVE.fullmatch(ref):
        out["reference"] = base + ref
    return out
