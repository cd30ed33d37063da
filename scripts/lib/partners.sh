# Shared by scripts/demo and scripts/schemathesis: starts the real partners and stepgate on
# free loopback ports, and stops everything when the calling script exits. Source it from
# the repository root after scripts/setup-partners.

sg_pids=()
sg_cleanup() { for pid in "${sg_pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap sg_cleanup EXIT

sg_free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
sg_json_field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
sg_wait_http() {
  for _ in $(seq 1 150); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "timed out waiting for $1" >&2
  return 1
}

# sg_start_partners WORKDIR CLIENTS_JSON: sets SG_REDIS_PORT, SG_SFN_PORT, SG_ISSUER.
sg_start_partners() {
  local work=$1 clients=$2
  SG_REDIS_PORT=$(sg_free_port)
  redis-server --port "$SG_REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
  sg_pids+=($!)
  SG_SFN_PORT=$(sg_free_port)
  .venv/bin/python tests/partners/sfn/moto_server.py "$SG_SFN_PORT" $$ >"$work/moto.log" 2>&1 &
  sg_pids+=($!)
  IDP_CLIENTS=$clients IDP_PARENT_PID=$$ node tests/partners/idp/idp.mjs >"$work/idp.out" 2>"$work/idp.log" &
  sg_pids+=($!)
  for _ in $(seq 1 150); do [ -s "$work/idp.out" ] && break; sleep 0.2; done
  SG_ISSUER=$(head -n1 "$work/idp.out" | sg_json_field issuer)
  sg_wait_http "http://127.0.0.1:$SG_SFN_PORT/moto-api/"
  sg_wait_http "$SG_ISSUER/.well-known/openid-configuration"
}

# sg_create_state_machine NAME: prints the ARN of a new Pass-state machine in the emulator.
sg_create_state_machine() {
  .venv/bin/python - "$SG_SFN_PORT" "$1" <<'PY'
import json, sys, boto3
sfn = boto3.client("stepfunctions", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1",
                   aws_access_key_id="demo", aws_secret_access_key="demo")
definition = {"StartAt": "Ship", "States": {"Ship": {"Type": "Pass", "Result": "shipped", "ResultPath": "$.status", "End": True}}}
print(sfn.create_state_machine(name=sys.argv[2], definition=json.dumps(definition),
                               roleArn="arn:aws:iam::123456789012:role/sfn")["stateMachineArn"])
PY
}

# sg_start_stepgate BINARY WORKDIR STATE_MACHINE_ARN [EXTRA_TOML]: writes a config, generates
# an audit key, starts `stepgate serve`, waits until ready; sets SG_GATEWAY and SG_CONFIG.
sg_start_stepgate() {
  local stepgate=$1 work=$2 arn=$3 extra=${4:-}
  "$stepgate" keygen --out "$work/audit.key" >/dev/null
  local port
  port=$(sg_free_port)
  SG_CONFIG="$work/stepgate.toml"
  cat >"$SG_CONFIG" <<TOML
[server]
listen = "127.0.0.1:$port"
[redis]
url = "redis://127.0.0.1:$SG_REDIS_PORT"
[aws]
region = "us-east-1"
endpoint_url = "http://127.0.0.1:$SG_SFN_PORT"
[aws.static_credentials]
access_key_id = "demo"
secret_access_key = "demo"
[audit]
signing_key = "$work/audit.key"
[log]
format = "pretty"
level = "warn"
[[issuers]]
issuer = "$SG_ISSUER"
audiences = ["https://stepgate.local"]
[workflows.orders]
state_machine_arn = "$arn"
[[workflows.orders.allow]]
clients = ["billing-service"]
scopes = ["workflows:trigger"]
$extra
TOML
  "$stepgate" serve --config "$SG_CONFIG" 2>"$work/stepgate.log" &
  sg_pids+=($!)
  SG_GATEWAY="http://127.0.0.1:$port"
  sg_wait_http "$SG_GATEWAY/readyz"
}

# sg_token CLIENT SECRET SCOPE: prints an access token from the identity provider.
sg_token() {
  curl -fsS -u "$1:$2" -d grant_type=client_credentials -d scope="$3" "$SG_ISSUER/token" | sg_json_field access_token
}
