#!/usr/bin/env bash
# Validates everything in deploy/ offline: seconds once its tools are cached.
#
#   deploy-check.sh [path/to/converge]
#
# 1. Kubernetes (deploy/kubernetes/): every manifest against the Kubernetes schemas with
#    `kubernetes-validate --strict` (PyPI; it ships the schemas, so no cluster and no network
#    at check time). It has no schema for the two custom kinds, Kustomization and PodMonitor:
#    only for those "no schema" is accepted, and they are checked here against the fields they
#    may use (a strict subset of kustomize's and the Prometheus Operator's definitions), any
#    other warning fails. Then the manifests against each other: every selector picks the
#    pods, every named port exists, the admin port is the one converge.toml listens on, every
#    ${NAME} in converge.toml is a key of the Secret, the kustomization lists every manifest.
# 2. Replicas <= partitions: a Kafka consumer group gives each partition to one member, so
#    the Deployment's replicas must not exceed CONVERGE_PARTITIONS (default 6: the partitions
#    of the "orders" topic the manifests expect, as deploy/scripts/kafka.sh creates topics).
# 3. systemd (deploy/systemd/converge.service): `systemd-analyze verify` on a copy whose
#    ExecStart is a real converge binary (the argument, else the workspace's release build,
#    built if missing); any message fails, not only errors.
# 4. Prometheus (deploy/prometheus/): `promtool check rules` and `promtool test rules` on the
#    alert rules (Debian package `prometheus`, installed if missing, its service not started).
#    That the rules and the Grafana dashboard name only what converge exports is
#    tests/it/observability.rs's part (it runs a real `serve`).
#
# kubernetes-validate lives in a virtualenv under ${XDG_CACHE_HOME:-~/.cache}/converge/venv,
# made on the first run (about 10 s) and reused after.
set -euo pipefail
# The binary's path as given, before the script moves to the repository root.
given_binary=${1:+$(realpath "$1")}
cd "$(dirname "$0")/../.."

KUBERNETES_VALIDATE_VERSION=1.37.0
partitions=${CONVERGE_PARTITIONS:-6}
venv=${XDG_CACHE_HOME:-$HOME/.cache}/converge/venv
failures=()
unit_dir=""
own_policy=""
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd=sudo

cleanup() {
  [ -z "$unit_dir" ] || rm -rf "$unit_dir"
  [ -z "$own_policy" ] || $sudo_cmd rm -f /usr/sbin/policy-rc.d
}
trap cleanup EXIT

fail() {
  echo "deploy-check: FAILED: $*" >&2
  failures+=("$1")
}

# What the checks run on: a virtualenv (python3-venv), systemd-analyze (systemd), pgrep (procps).
missing=()
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v pgrep >/dev/null || missing+=(procps)
if [ ${#missing[@]} -gt 0 ]; then
  echo "deploy-check: installing the Debian packages ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- 1 and 2: Kubernetes ------------------------------------------------------------------

if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -qx "$KUBERNETES_VALIDATE_VERSION"; then
  echo "deploy-check: installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $venv"
  python3 -m venv --clear "$venv" # --clear: a venv left half-made by an earlier run is rebuilt
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi

# --quiet prints only warnings and failures: each line is one.
validation=$("$venv/bin/kubernetes-validate" --strict --quiet deploy/kubernetes/*.yaml 2>&1) \
  || fail "kubernetes: kubernetes-validate --strict refused a manifest"
while IFS= read -r line; do
  [ -n "$line" ] || continue
  case "$line" in
    "WARN "*" Couldn't find schema for kind Kustomization with api version kustomize.config.k8s.io/v1beta1 "*) ;;
    "WARN "*" Couldn't find schema for kind PodMonitor with api version monitoring.coreos.com/v1 "*) ;;
    *) fail "kubernetes: $line" ;;
  esac
done <<<"$validation"

# The custom kinds' fields, and the manifests against each other (PyYAML and jsonschema come
# with kubernetes-validate).
if ! "$venv/bin/python" - deploy/kubernetes "$partitions" <<'PYTHON'
import glob, os, re, sys, tomllib
import jsonschema, yaml

folder, partitions = sys.argv[1], int(sys.argv[2])
problems = []
docs = {}
for path in sorted(glob.glob(os.path.join(folder, "*.yaml"))):
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if doc:
                docs.setdefault(doc["kind"], []).append((os.path.basename(path), doc))

def one(kind):
    found = docs.get(kind, [])
    if len(found) != 1:
        problems.append(f"expected one {kind}, found {len(found)}")
        return {}
    return found[0][1]

string = {"type": "string"}
strings = {"type": "array", "items": string}
string_map = {"type": "object", "additionalProperties": string}
# Prometheus Operator's duration pattern (monitoring.coreos.com_podmonitors.yaml).
duration = {"type": "string",
            "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
metadata = {"type": "object", "additionalProperties": False, "required": ["name"],
            "properties": {"name": string, "namespace": string, "labels": string_map,
                           "annotations": string_map}}
label_selector = {"type": "object", "additionalProperties": False,
                  "properties": {"matchLabels": string_map,
                                 "matchExpressions": {"type": "array", "items": {
                                     "type": "object", "additionalProperties": False,
                                     "required": ["key", "operator"],
                                     "properties": {"key": string, "operator": string,
                                                    "values": strings}}}}}
relabelings = {"type": "array", "items": {"type": "object", "additionalProperties": False,
               "properties": {"action": string, "sourceLabels": strings, "separator": string,
                              "targetLabel": string, "regex": string, "replacement": string,
                              "modulus": {"type": "integer"}}}}
schemas = {
    "PodMonitor": {
        "type": "object", "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PodMonitor"},
            "metadata": metadata,
            "spec": {"type": "object", "additionalProperties": False,
                     "required": ["selector", "podMetricsEndpoints"],
                     "properties": {
                         "selector": label_selector,
                         "namespaceSelector": {"type": "object", "additionalProperties": False,
                                               "properties": {"any": {"type": "boolean"},
                                                              "matchNames": strings}},
                         "jobLabel": string,
                         "podTargetLabels": strings,
                         "sampleLimit": {"type": "integer", "minimum": 0},
                         "podMetricsEndpoints": {
                             "type": "array", "minItems": 1,
                             "items": {"type": "object", "additionalProperties": False,
                                       "required": ["port"],
                                       "properties": {
                                           "port": string,
                                           "path": {"type": "string", "pattern": "^/"},
                                           "scheme": {"enum": ["http", "https"]},
                                           "interval": duration,
                                           "scrapeTimeout": duration,
                                           "honorLabels": {"type": "boolean"},
                                           "relabelings": relabelings,
                                           "metricRelabelings": relabelings}}}}},
        },
    },
    "Kustomization": {
        "type": "object", "additionalProperties": False,
        "required": ["apiVersion", "kind", "resources"],
        "properties": {
            "apiVersion": {"const": "kustomize.config.k8s.io/v1beta1"},
            "kind": {"const": "Kustomization"},
            "namespace": string,
            "namePrefix": string,
            "nameSuffix": string,
            "resources": strings,
            "labels": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["pairs"],
                "properties": {"pairs": string_map, "includeSelectors": {"type": "boolean"},
                               "includeTemplates": {"type": "boolean"}}}},
            "commonAnnotations": string_map,
            "images": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["name"],
                "properties": {"name": string, "newName": string, "newTag": string,
                               "digest": string}}},
        },
    },
}
for kind, schema in schemas.items():
    for path, doc in docs.get(kind, []):
        for error in jsonschema.Draft202012Validator(schema).iter_errors(doc):
            where = "/".join(str(p) for p in error.absolute_path) or "(top)"
            problems.append(f"{path}: {kind} {where}: {error.message}")

kustomization = one("Kustomization")
listed = set(kustomization.get("resources", []))
present = {os.path.basename(p) for p in glob.glob(os.path.join(folder, "*.yaml"))} - {"kustomization.yaml"}
for missing in sorted(listed - present):
    problems.append(f"kustomization.yaml lists {missing}, which does not exist")
for unlisted in sorted(present - listed):
    problems.append(f"kustomization.yaml does not list {unlisted}")

deployment = one("Deployment")
pod = deployment.get("spec", {}).get("template", {})
pod_labels = pod.get("metadata", {}).get("labels", {})
containers = pod.get("spec", {}).get("containers", [])
container = containers[0] if containers else {}
ports = {p.get("name"): p.get("containerPort") for p in container.get("ports", [])}

def selects(what, selector):
    wanted = selector.get("matchLabels", {})
    if not wanted or any(pod_labels.get(k) != v for k, v in wanted.items()):
        problems.append(f"{what} selects {wanted}, not the Deployment's pods {pod_labels}")

selects("the Deployment", deployment["spec"].get("selector", {}))
selects("the PodDisruptionBudget", one("PodDisruptionBudget").get("spec", {}).get("selector", {}))
selects("the PodMonitor", one("PodMonitor").get("spec", {}).get("selector", {}))
service = one("Service").get("spec", {})
selects("the Service", {"matchLabels": service.get("selector", {})})
for endpoint in one("PodMonitor").get("spec", {}).get("podMetricsEndpoints", []):
    if endpoint.get("port") not in ports:
        problems.append(f"the PodMonitor scrapes port {endpoint.get('port')!r}; the container has {sorted(ports)}")
    if endpoint.get("path", "/metrics") != "/metrics":
        problems.append(f"the PodMonitor scrapes {endpoint.get('path')}; converge serves /metrics")
for port in service.get("ports", []):
    if port.get("targetPort") not in ports:
        problems.append(f"the Service targets port {port.get('targetPort')!r}; the container has {sorted(ports)}")
for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
    http = container.get(probe, {}).get("httpGet", {})
    if http.get("path") != path or http.get("port") not in ports:
        problems.append(f"{probe} must GET {path} on a container port, not {http}")

replicas = deployment["spec"].get("replicas", 1)
if replicas > partitions:
    problems.append(f"the Deployment runs {replicas} replicas but the topic has {partitions} partitions "
                    "(CONVERGE_PARTITIONS): the extra members would sit idle")

# converge.toml: the admin port the probes and Prometheus use, and the secrets it names.
configmap = one("ConfigMap")
text = configmap.get("data", {}).get("converge.toml", "")
try:
    config = tomllib.loads(text)
except tomllib.TOMLDecodeError as error:
    problems.append(f"converge.toml in the ConfigMap: {error}")
    config = {}
listen = config.get("admin", {}).get("listen", "127.0.0.1:9898")
if ports.get("admin") != int(listen.rsplit(":", 1)[1]) or listen.startswith("127."):
    problems.append(f"[admin] listen = {listen!r}: the container's admin port is {ports.get('admin')} "
                    "and the kubelet and Prometheus reach it from outside the pod")
args = container.get("args", [])
config_path = args[args.index("--config") + 1] if "--config" in args else None
mounted = [m["mountPath"] for m in container.get("volumeMounts", [])]
if not config_path or os.path.dirname(config_path) not in mounted or not config_path.endswith("/converge.toml"):
    problems.append(f"serve reads --config {config_path}; the ConfigMap is mounted at {mounted}")
secret = one("Secret")
secret_keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
named = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
for name in sorted(named - secret_keys):
    problems.append(f"converge.toml names ${{{name}}}, which the Secret does not hold")
if not any(e.get("secretRef", {}).get("name") == secret.get("metadata", {}).get("name")
           for e in container.get("envFrom", [])):
    problems.append("the container does not take its environment from the Secret")

for problem in problems:
    print(f"deploy-check: FAILED: kubernetes: {problem}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"deploy-check: kubernetes: {sum(len(v) for v in docs.values())} resources valid; "
      f"replicas {replicas} <= partitions {partitions}")
PYTHON
then
  failures+=("kubernetes")
fi

# --- 3: systemd ---------------------------------------------------------------------------

binary=$given_binary
if [ -z "$binary" ]; then
  target_dir=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  binary=$target_dir/release/converge
  if [ ! -x "$binary" ]; then
    echo "deploy-check: building $binary for the unit's ExecStart"
    cargo build --release -p converge-cli
  fi
fi
binary=$(realpath "$binary")
unit_dir=$(mktemp -d)
# The unit names the installed path; verify checks that ExecStart is an executable.
sed "s#^ExecStart=/usr/local/bin/converge #ExecStart=$binary #" deploy/systemd/converge.service \
  >"$unit_dir/converge.service"
grep -q "^ExecStart=$binary " "$unit_dir/converge.service" \
  || fail "systemd: ExecStart does not start with /usr/local/bin/converge"
# Any message about this unit fails (an unknown key is only a warning, exit 0); messages about
# other units of the machine are not this check's business.
verified_status=0
verified=$(systemd-analyze verify "$unit_dir/converge.service" 2>&1) || verified_status=$?
verified=$(grep -F "converge.service" <<<"$verified" || true)
if [ "$verified_status" -eq 0 ] && [ -z "$verified" ]; then
  echo "deploy-check: systemd: converge.service verifies"
else
  fail "systemd: systemd-analyze verify: ${verified:-exit status non-zero}"
fi

# --- 4: Prometheus ------------------------------------------------------------------------

if ! command -v promtool >/dev/null; then
  echo "deploy-check: installing the Debian package prometheus (for promtool)"
  export DEBIAN_FRONTEND=noninteractive
  # Only promtool is wanted: policy-rc.d keeps the package's service from starting (and a
  # server that starts anyway, under systemd say, is stopped).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo_cmd tee /usr/sbin/policy-rc.d >/dev/null
    $sudo_cmd chmod +x /usr/sbin/policy-rc.d
    own_policy=1
  fi
  running_before=$(pgrep -x prometheus || true)
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if [ -z "$running_before" ] && pgrep -x prometheus >/dev/null; then
    $sudo_cmd systemctl disable --now prometheus 2>/dev/null \
      || $sudo_cmd kill $(pgrep -x prometheus)
  fi
fi
if checked=$(promtool check rules deploy/prometheus/converge-alerts.yaml 2>&1); then
  echo "deploy-check: prometheus: $(grep -o 'SUCCESS.*' <<<"$checked")"
else
  fail "prometheus: promtool check rules: $checked"
fi
if tested=$(cd deploy/prometheus && promtool test rules converge-alerts.test.yaml 2>&1); then
  echo "deploy-check: prometheus: alert unit tests pass"
else
  fail "prometheus: promtool test rules: $tested"
fi

# --- The Grafana dashboard: JSON (what it names is the observability test's part) ----------

if python3 -c 'import json, sys; json.load(open(sys.argv[1]))' deploy/grafana/converge.json; then
  echo "deploy-check: grafana: converge.json parses"
else
  fail "grafana: deploy/grafana/converge.json is not JSON"
fi

if [ ${#failures[@]} -gt 0 ]; then
  echo "deploy-check: ${#failures[@]} check(s) failed" >&2
  exit 1
fi
echo "deploy-check: deploy/ is valid"
