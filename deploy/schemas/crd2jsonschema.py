#!/usr/bin/env python3
"""Turns CustomResourceDefinitions into JSON schemas for .ci/check-deploy.

    python3 deploy/schemas/crd2jsonschema.py deploy/schemas CRD.yaml...

writes deploy/schemas/<group>/<kind>_<version>.json for every version of
every CRD, the layout of kubeconform's -schema-location templates and the
CRDs catalog. Strict like kubeconform's openapi2jsonschema: an object that
lists its properties accepts no other (unless the CRD preserves unknown
fields), so a misspelt field fails instead of being pruned by the API server.
OpenAPI's `nullable` becomes a JSON Schema "null" type; descriptions are
dropped to keep the files small.
"""

import json
import pathlib
import sys

import yaml


def strict(node):
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items() if k != "description"}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def main(outdir, paths):
    for path in paths:
        for crd in yaml.safe_load_all(pathlib.Path(path).read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                schema = strict(version["schema"]["openAPIV3Schema"])
                schema["$schema"] = "http://json-schema.org/draft-07/schema#"
                annotations = crd["metadata"].get("annotations", {})
                schema["$comment"] = f"from CRD {crd['metadata']['name']}" + "".join(
                    f", {k}: {v}" for k, v in sorted(annotations.items()) if k.endswith("/version")
                )
                name = f"{spec['names']['kind'].lower()}_{version['name']}.json"
                target = pathlib.Path(outdir, spec["group"], name)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
                print(target)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
