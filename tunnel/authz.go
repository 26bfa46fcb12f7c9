package tunnel

import (
	"context"
	"net"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/meshca/meshca/policy"
	"google.golang.org/protobuf/encoding/protojson"
)

// Context extensions the tunnel adds to the policy input
// (attributes.contextExtensions), beside OPA-Envoy's source and
// destination (address, principal).
const (
	// ExtListener is the listener's name.
	ExtListener = "meshca_tunnel_listener"
	// ExtDirection is "inbound" (the peer is the source) or "outbound"
	// (this workload is the source, the peer the destination).
	ExtDirection = "meshca_tunnel_direction"
	// ExtMode is the inbound listener's mode, STRICT or PERMISSIVE.
	ExtMode = "meshca_tunnel_mode"
	// ExtAuthenticated is "true" for an mTLS peer and "false" for a
	// plaintext connection to a PERMISSIVE listener (whose source has no
	// principal).
	ExtAuthenticated = "meshca_tunnel_authenticated"
)

// connFacts is what the policy is asked about one connection.
type connFacts struct {
	listener, direction, mode string
	authenticated             bool
	source, destination       net.Addr
	sourceID, destinationID   string
}

var inputJSON = protojson.MarshalOptions{}

// input builds the policy input as OPA-Envoy's network filter would: a
// CheckRequest with source and destination (address and principal), in
// the same encoding and through the same policy.EnvoyInput as the agent's
// ext_authz.
func (f connFacts) checkRequest() *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:      &authv3.AttributeContext_Peer{Address: socketAddress(f.source), Principal: f.sourceID},
		Destination: &authv3.AttributeContext_Peer{Address: socketAddress(f.destination), Principal: f.destinationID},
		ContextExtensions: map[string]string{
			ExtListener: f.listener, ExtDirection: f.direction, ExtMode: f.mode,
			ExtAuthenticated: strconv.FormatBool(f.authenticated),
		},
	}}
}

func socketAddress(a net.Addr) *corev3.Address {
	if a == nil {
		return nil
	}
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return nil
	}
	p, _ := strconv.ParseUint(port, 10, 32)
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)}}}}
}

// decide asks the policy about a connection. An error denies.
func (z *authorizer) decide(ctx context.Context, f connFacts) (bool, error) {
	b, err := inputJSON.Marshal(f.checkRequest())
	if err != nil {
		return false, err
	}
	in, err := policy.EnvoyInput(b)
	if err != nil {
		return false, err
	}
	res, err := z.z.Decide(ctx, in)
	if err != nil {
		return false, err
	}
	return res.Allowed, nil
}
