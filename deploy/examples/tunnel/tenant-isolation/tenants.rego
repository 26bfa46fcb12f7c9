# Tenant isolation for meshca tunnels (and any OPA-Envoy ext_authz user).
#
# Workload IDs follow Istio's convention spiffe://<td>/ns/<namespace>/sa/<sa>.
# data.envoy.authz.tenants maps every namespace to its tenant; a connection
# is allowed only when the source and the destination belong to the same
# tenant, whatever the network allows. Plaintext connections (a PERMISSIVE
# listener) have no source principal and are refused, and so is any
# namespace not listed.
#
# Push it with:  meshca policy push deploy/examples/tunnel/tenant-isolation --name mesh
package envoy.authz

default allow := false

# tenant_of(id) is the tenant of a SPIFFE ID's namespace; undefined for an
# ID without /ns/<namespace>/ or of an unlisted namespace.
tenant_of(id) := t if {
	parts := split(id, "/")
	parts[0] == "spiffe:"
	parts[3] == "ns"
	t := data.envoy.authz.tenants[parts[4]]
}

allow if {
	input.attributes.contextExtensions.meshca_tunnel_authenticated == "true"
	tenant_of(input.attributes.source.principal) == tenant_of(input.attributes.destination.principal)
}
