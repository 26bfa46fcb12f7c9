# Egress: which mesh workloads may leave through the gateway. The gateway's
# inbound listener "mesh" asks this policy; data.envoy.authz.egress lists
# the SPIFFE IDs allowed out. Plaintext and unlisted workloads are refused.
#
# Push it with:  meshca policy push deploy/examples/tunnel/egress-gateway/policy --name egress
package envoy.authz

default allow := false

allow if {
	input.attributes.contextExtensions.meshca_tunnel_listener == "mesh"
	input.attributes.contextExtensions.meshca_tunnel_authenticated == "true"
	input.attributes.source.principal in data.envoy.authz.egress
}
