#!/usr/bin/env python3
"""Validates Kubernetes manifests offline; tests/repo/deploy.rs runs it on
deploy/kubernetes/*.yaml with .venv's Python (scripts/quickstart install).

    .venv/bin/python3 tests/repo/validate_manifests.py FILE...

- Built-in kinds: against the Kubernetes API's OpenAPI schemas that the
  kubernetes-validate package ships, for the oldest and the newest version
  in VERSIONS, strict (a field the schema doesn't know is an error).
- PodMonitor (monitoring.coreos.com/v1): kubernetes-validate has no schemas
  for custom resources, so it is checked against prometheus-operator
  v0.80.1's CRD schema, in the form of the pydantic models that
  cloudcoil-models-prometheus-operator generates from it (types, required
  fields, enums, patterns). The models ignore unknown fields, so the check
  is made strict by a round trip: the document must equal what the model
  gives back.
- A kind with no schema here is an error, not a warning.

Prints one line per document and check; exits 1 if any failed.
"""
import sys

import kubernetes_validate
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring_v1

VERSIONS = ["1.29.0", "1.37.0"]

CUSTOM = {("monitoring.coreos.com/v1", "PodMonitor"): monitoring_v1.PodMonitor}


def strip_nulls(v):
    if isinstance(v, dict):
        return {k: strip_nulls(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [strip_nulls(x) for x in v]
    return v


def check_custom(model, doc):
    obj = model.model_validate(doc)
    back = strip_nulls(obj.model_dump(mode="json", by_alias=True, exclude_unset=True))
    if back != strip_nulls(doc):
        raise ValueError(f"fields the schema does not know: the model gives back {back}, not {doc}")


def main(files):
    failed = 0
    for path in files:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            api, kind = doc.get("apiVersion"), doc.get("kind")
            name = f"{path}: {kind} {doc.get('metadata', {}).get('name')}"
            if (api, kind) in CUSTOM:
                try:
                    check_custom(CUSTOM[(api, kind)], doc)
                    print(f"ok   {name}: prometheus-operator v0.80.1 CRD schema (strict)")
                except Exception as e:  # pydantic's ValidationError or ours
                    failed += 1
                    print(f"FAIL {name}: {e}")
                continue
            for version in VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                    print(f"ok   {name}: Kubernetes {version} (strict)")
                except kubernetes_validate.SchemaNotFoundError:
                    failed += 1
                    print(f"FAIL {name}: no schema for {api} {kind}")
                except kubernetes_validate.ValidationError as e:
                    failed += 1
                    print(f"FAIL {name}: Kubernetes {version}: {e.message} at {'.'.join(map(str, e.path))}")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: validate_manifests.py FILE...")
    sys.exit(main(sys.argv[1:]))
