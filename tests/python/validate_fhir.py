#!/usr/bin/env python3
"""Validates every FHIR Bundle (*.json) in a folder with an independent validator.

    python tests/python/validate_fhir.py DIR
    python tests/python/validate_fhir.py --answers DIR

With `--answers`, the files are what Junction's FHIR API answered (searchset and
history Bundles, single resources, OperationOutcomes): each is validated against
the fhir.resources R4B model of its own resourceType, and the transaction rules
below are not applied.

Each file is parsed with `fhir.resources.R4B.bundle.Bundle.model_validate_json`
(PyPI fhir.resources: the R4B models check element names, cardinality, primitive
formats such as dates, decimals and ids, and required elements). fhir.resources does
not check code bindings or Bundle-level rules, so the checks that Junction promises
for every document are made here as well:

- the Bundle is a `transaction`;
- every entry has `fullUrl` `urn:uuid:<uuid>`, a resource with an `id`, and
  `request` `PUT <resourceType>/<id>`; no two entries share a fullUrl;
- every `reference` that is a `urn:uuid:` points at an entry of the same Bundle;
- no empty string, object or array anywhere (empty elements are pruned);
- every Identifier has a value (a system alone identifies nothing), every Coding a
  code, every Quantity a value, every name, telecom and address something besides
  its use, and every Reference something to follow (not a `type` alone);
- `Patient.gender` and the statuses of the resources Junction emits use their
  required value sets.

Prints one line per problem (file: where: what) and exits 1 if there was any,
0 otherwise; 2 when it cannot run (no folder, no files, fhir.resources missing).
"""

import json
import os
import re
import sys

try:
    from fhir.resources.R4B import get_fhir_model_class
    from fhir.resources.R4B.bundle import Bundle
except ImportError as err:  # pragma: no cover - setup problem, not a validation result
    print(f"error: cannot import fhir.resources.R4B ({err}); run tests/python/setup-venv.sh",
          file=sys.stderr)
    sys.exit(2)

UUID_URN = re.compile(r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# Required bindings (FHIR R4) of the elements Junction fills.
REQUIRED_CODES = {
    ("Patient", "gender"): {"male", "female", "other", "unknown"},
    ("RelatedPerson", "gender"): {"male", "female", "other", "unknown"},
    ("Encounter", "status"): {"planned", "arrived", "triaged", "in-progress", "onleave",
                              "finished", "cancelled", "entered-in-error", "unknown"},
    ("Observation", "status"): {"registered", "preliminary", "final", "amended", "corrected",
                                "cancelled", "entered-in-error", "unknown"},
    ("DiagnosticReport", "status"): {"registered", "partial", "preliminary", "final", "amended",
                                     "corrected", "appended", "cancelled", "entered-in-error",
                                     "unknown"},
    ("DocumentReference", "status"): {"current", "superseded", "entered-in-error"},
    ("DocumentReference", "docStatus"): {"preliminary", "final", "amended", "entered-in-error"},
    ("AllergyIntolerance", "type"): {"allergy", "intolerance"},
    ("AllergyIntolerance", "criticality"): {"low", "high", "unable-to-assess"},
}


def empty_elements(value, where):
    """Yields the paths of empty strings, objects and arrays."""
    if isinstance(value, dict):
        if not value:
            yield where or "(root)"
        for key, item in value.items():
            yield from empty_elements(item, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        if not value:
            yield where
        for i, item in enumerate(value):
            yield from empty_elements(item, f"{where}[{i}]")
    elif isinstance(value, str) and not value.strip():
        yield where


def strings_at(value, where, keys):
    """Yields (path, value) for every string under one of `keys`, at any depth."""
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else key
            if key in keys and isinstance(item, str):
                yield path, item
            else:
                yield from strings_at(item, path, keys)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from strings_at(item, f"{where}[{i}]", keys)


URI_KEYS = {"system", "url", "fullUrl"}

IDENTIFIER_KEYS = {"identifier", "accessionIdentifier"}


def dicts(value, where):
    """Yields (path, object) for every JSON object at any depth."""
    if isinstance(value, dict):
        yield where, value
        for key, item in value.items():
            yield from dicts(item, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from dicts(item, f"{where}[{i}]")


def identifiers(value, where):
    """Yields (path, identifier) for every Identifier (under `identifier` or
    `accessionIdentifier`, one or a list) at any depth."""
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else key
            if key in IDENTIFIER_KEYS:
                for i, one in enumerate(item if isinstance(item, list) else [item]):
                    if isinstance(one, dict):
                        yield (f"{path}[{i}]" if isinstance(item, list) else path), one
            yield from identifiers(item, path)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from identifiers(item, f"{where}[{i}]")


def bundle_rules(doc):
    """Junction's own document rules; yields (where, what)."""
    if doc.get("resourceType") != "Bundle":
        yield "resourceType", f"expected Bundle, found {doc.get('resourceType')!r}"
        return
    if doc.get("type") != "transaction":
        yield "type", f"expected transaction, found {doc.get('type')!r}"
    for where in empty_elements(doc, ""):
        yield where, "empty element (should have been pruned)"
    full_urls = set()
    for i, entry in enumerate(doc.get("entry", [])):
        at = f"entry[{i}]"
        full_url = entry.get("fullUrl", "")
        if not UUID_URN.match(full_url):
            yield f"{at}.fullUrl", f"expected urn:uuid:<lowercase uuid>, found {full_url!r}"
        if full_url in full_urls:
            yield f"{at}.fullUrl", f"duplicate fullUrl {full_url}"
        full_urls.add(full_url)
        resource = entry.get("resource", {})
        rtype, rid = resource.get("resourceType"), resource.get("id")
        if not rid:
            yield f"{at}.resource.id", "missing"
        request = entry.get("request", {})
        if request.get("method") != "PUT":
            yield f"{at}.request.method", f"expected PUT, found {request.get('method')!r}"
        if request.get("url") != f"{rtype}/{rid}":
            yield f"{at}.request.url", f"expected {rtype}/{rid}, found {request.get('url')!r}"
        for (ctype, element), codes in REQUIRED_CODES.items():
            if rtype != ctype:
                continue
            if element in resource and resource[element] not in codes:
                yield f"{at}.resource.{element}", \
                    f"{resource[element]!r} is not one of {sorted(codes)}"
    for where, uri in strings_at(doc, "", URI_KEYS):
        if not uri or any(c.isspace() for c in uri):
            yield where, f"{uri!r} is not a FHIR uri (no white space, not empty)"
    # an identifier names something: a system alone (no value) identifies nothing
    for where, identifier in identifiers(doc, ""):
        if "value" not in identifier:
            yield where, f"identifier without a value: {identifier}"
    # likewise a Coding with no code, and a Reference with nothing to follow
    for where, item in dicts(doc, ""):
        key = where.rsplit(".", 1)[-1]
        if key.startswith("coding[") and "code" not in item:
            yield where, f"coding without a code: {item}"
        if set(item) <= {"value", "comparator", "unit", "system", "code"} \
                and set(item) & {"unit", "comparator"} and "value" not in item:
            yield where, f"quantity without a value: {item}"
        if key.startswith(("name[", "telecom[", "address[")) and not set(item) - {"use", "type",
                                                                                 "system", "rank",
                                                                                 "period"}:
            yield where, f"{key.split('[')[0]} with nothing in it but its kind: {item}"
        if (isinstance(item.get("type"), str) and set(item) <= {"type", "reference",
                                                                "identifier", "display"}
                and not set(item) & {"reference", "identifier", "display"}):
            yield where, f"reference with only a type: {item}"
    for where, ref in strings_at(doc, "", {"reference"}):
        if ref.startswith("urn:uuid:") and ref not in full_urls:
            yield where, f"reference {ref} matches no entry of the Bundle"


def validate(path):
    """Returns the list of problems of one file."""
    problems = []
    with open(path, "rb") as f:
        raw = f.read()
    try:
        doc = json.loads(raw)
    except ValueError as err:
        return [f"not JSON: {err}"]
    try:
        Bundle.model_validate_json(raw)
    except Exception as err:  # pydantic.ValidationError, or a model's own ValueError
        problems.extend(f"fhir.resources: {line}" for line in str(err).splitlines()
                        if line.strip() and not line.strip().startswith("For further"))
    problems.extend(f"{where}: {what}" for where, what in bundle_rules(doc))
    return problems


def validate_answer(path):
    """Returns the problems of one API answer: the R4B model of its resourceType."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        rtype = json.loads(raw).get("resourceType")
    except (ValueError, AttributeError) as err:
        return [f"not a JSON object: {err}"]
    if not isinstance(rtype, str):
        return ["no resourceType"]
    try:
        model = get_fhir_model_class(rtype)
    except (KeyError, ValueError) as err:
        return [f"unknown resourceType {rtype!r}: {err}"]
    try:
        model.model_validate_json(raw)
    except Exception as err:  # pydantic.ValidationError, or a model's own ValueError
        return [f"fhir.resources ({rtype}): {line}" for line in str(err).splitlines()
                if line.strip() and not line.strip().startswith("For further")]
    return []


def main(argv):
    check = validate
    if len(argv) == 3 and argv[1] == "--answers":
        check = validate_answer
        argv = [argv[0], argv[2]]
    if len(argv) != 2 or not os.path.isdir(argv[1]):
        print("usage: validate_fhir.py [--answers] DIR (a folder of *.json files)",
              file=sys.stderr)
        return 2
    files = sorted(f for f in os.listdir(argv[1]) if f.endswith(".json"))
    if not files:
        print(f"error: no *.json files in {argv[1]}", file=sys.stderr)
        return 2
    failed = 0
    for name in files:
        problems = check(os.path.join(argv[1], name))
        if problems:
            failed += 1
            for problem in problems:
                print(f"{name}: {problem}")
        else:
            print(f"{name}: ok")
    print(f"{len(files) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
