#!/bin/sh
# meshca tunnel demo: a whole trust domain (meshca dev), a plain HTTP
# service behind two inbound tunnel listeners ("orders" and "payroll"),
# and outbound listeners to each; the policy lets you reach orders and
# not payroll. One allowed call, one denied call, and the audit lines of
# both decisions.
#
#   sh deploy/examples/tunnel/demo.sh            # with meshca on $PATH
#   MESHCA="go run ./cmd/meshca" sh deploy/examples/tunnel/demo.sh
#
# Needs python3 (the plain service) and curl; uses ports 18001-18002,
# 18080, 18090 and 18443-18444 on 127.0.0.1.
set -eu
M=${MESHCA:-meshca}
D=$(mktemp -d /tmp/meshca-demo.XXXXXX)
cleanup() {
	for p in ${PIDS:-}; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$D"
}
trap cleanup EXIT INT TERM
PIDS=

$M dev --data-dir "$D" >"$D/dev.log" 2>&1 &
PIDS="$PIDS $!"
echo "starting meshca dev in $D ..."
until $M workload fetch --socket "$D/agent.sock" --out "$D/svid" >/dev/null 2>&1; do sleep 0.3; done
ID="spiffe://meshca.local/dev/uid/$(id -u)"
ADDR="unix://$D/admin.sock"
echo "your identity: $ID"

mkdir -p "$D/policy/envoy/authz" "$D/www"
cat >"$D/policy/demo.rego" <<REGO
package envoy.authz

default allow := false

allow if {
	input.attributes.contextExtensions.meshca_tunnel_listener == "orders"
	input.attributes.source.principal in data.envoy.authz.callers
}
REGO
printf '{"callers": ["%s"]}\n' "$ID" >"$D/policy/envoy/authz/data.json"
$M policy push "$D/policy" --name demo --addr "$ADDR" >/dev/null
$M bundle show --opa-key --addr "$ADDR" >"$D/opa-key.pem"
echo "hello from the orders service" >"$D/www/index.html"

python3 -m http.server 18080 --bind 127.0.0.1 --directory "$D/www" >"$D/www.log" 2>&1 &
PIDS="$PIDS $!"
until curl -sf http://127.0.0.1:18080/ >/dev/null 2>&1; do sleep 0.3; done
$M tunnel --socket "$D/agent.sock" --policy-bundle demo --policy-key-file "$D/opa-key.pem" \
	--inbound 127.0.0.1:18443=127.0.0.1:18080,name=orders \
	--inbound 127.0.0.1:18444=127.0.0.1:18080,name=payroll \
	--outbound "127.0.0.1:18001=127.0.0.1:18443,expect=$ID,name=to-orders" \
	--outbound "127.0.0.1:18002=127.0.0.1:18444,expect=$ID,name=to-payroll" \
	--http-addr 127.0.0.1:18090 >"$D/tunnel.log" 2>&1 &
PIDS="$PIDS $!"
until curl -sf http://127.0.0.1:18090/readyz >/dev/null 2>&1; do sleep 0.3; done

echo
echo "== curl http://127.0.0.1:18001/  (to orders: allowed)"
curl -s --max-time 5 http://127.0.0.1:18001/ || echo "(refused)"
echo "== curl http://127.0.0.1:18002/  (to payroll: denied by the policy)"
curl -s --max-time 5 http://127.0.0.1:18002/ || echo "(refused)"
sleep 0.5
echo
echo "== the tunnel's audit lines"
grep 'audit=true' "$D/tunnel.log" | grep 'inbound'
