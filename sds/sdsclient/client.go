// Package sdsclient is a small Envoy SDS v3 client, for `meshca sds
// fetch`: it connects to an agent's Unix socket and gets named secrets the
// way an Envoy would, either on a state-of-the-world stream (initial
// request with node and names, ACK of the response) or with
// FetchSecrets, and turns them into PEM files.
package sdsclient

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
)

// SecretTypeURL is the type URL of SDS resources.
const SecretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// DefaultNodeID is the Envoy node ID the client presents.
const DefaultNodeID = "meshca-sds-fetch"

// Client gets secrets from an SDS server.
type Client struct {
	conn *grpc.ClientConn // nil when made with New
	sds  secretv3.SecretDiscoveryServiceClient
	// Node is sent on the first request of each stream and on fetches.
	Node *corev3.Node
}

// Dial connects to the SDS server on a Unix socket: a path, or a
// "unix:///abs/path" address. The connection is made lazily, by the first
// call.
func Dial(socket string) (*Client, error) {
	if socket == "" {
		return nil, errors.New("sdsclient: no socket")
	}
	target := socket
	if !strings.HasPrefix(socket, "unix:") {
		target = "unix://" + socket
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("sdsclient: dial %s: %w", socket, err)
	}
	c := New(conn)
	c.conn = conn
	return c, nil
}

// New makes a client on an existing connection (which the caller closes).
func New(conn grpc.ClientConnInterface) *Client {
	return &Client{sds: secretv3.NewSecretDiscoveryServiceClient(conn), Node: &corev3.Node{Id: DefaultNodeID}}
}

// Close closes the connection made by Dial.
func (c *Client) Close() error {
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

// MissingError reports requested names the response did not carry: the
// caller may not have them (meshca's SDS answers a refused name with no
// resource), or they were not ready yet.
type MissingError struct {
	Names []string
}

func (e *MissingError) Error() string {
	return fmt.Sprintf("sdsclient: no secret for %s (not granted to this workload, or not issued yet)", strings.Join(e.Names, ", "))
}

// Response is what the server sent.
type Response struct {
	VersionInfo string
	Nonce       string
	// Secrets are in the order the server sent them; each is named as
	// requested.
	Secrets []*tlsv3.Secret
}

// Stream opens a SotW stream for names (none: every secret the caller
// may have), waits for the first response, ACKs it like Envoy and closes
// the stream. When the response lacks a requested name it returns the
// response and a *MissingError.
func (c *Client) Stream(ctx context.Context, names ...string) (*Response, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := c.sds.StreamSecrets(ctx)
	if err != nil {
		return nil, fmt.Errorf("sdsclient: open stream: %w", err)
	}
	if err := s.Send(&discoveryv3.DiscoveryRequest{Node: c.Node, ResourceNames: names, TypeUrl: SecretTypeURL}); err != nil {
		return nil, fmt.Errorf("sdsclient: send request: %w", err)
	}
	resp, err := s.Recv()
	if err != nil {
		return nil, fmt.Errorf("sdsclient: receive: %w", err)
	}
	out, err := decode(resp)
	if err != nil {
		_ = s.Send(nack(names, resp.GetNonce(), err))
		return nil, err
	}
	if err := s.Send(&discoveryv3.DiscoveryRequest{ResourceNames: names, TypeUrl: SecretTypeURL, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
		return nil, fmt.Errorf("sdsclient: send ACK: %w", err)
	}
	_ = s.CloseSend()
	return out, missing(out, names)
}

// Fetch gets names (none: every secret the caller may have) with one
// FetchSecrets call. When the response lacks a requested name it returns
// the response and a *MissingError.
func (c *Client) Fetch(ctx context.Context, names ...string) (*Response, error) {
	resp, err := c.sds.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{Node: c.Node, ResourceNames: names, TypeUrl: SecretTypeURL})
	if err != nil {
		return nil, fmt.Errorf("sdsclient: FetchSecrets: %w", err)
	}
	out, err := decode(resp)
	if err != nil {
		return nil, err
	}
	return out, missing(out, names)
}

func decode(resp *discoveryv3.DiscoveryResponse) (*Response, error) {
	out := &Response{VersionInfo: resp.GetVersionInfo(), Nonce: resp.GetNonce()}
	for i, a := range resp.GetResources() {
		sec, err := unmarshal(a)
		if err != nil {
			return nil, fmt.Errorf("sdsclient: resource %d: %w", i, err)
		}
		out.Secrets = append(out.Secrets, sec)
	}
	return out, nil
}

func unmarshal(a *anypb.Any) (*tlsv3.Secret, error) {
	if a.GetTypeUrl() != SecretTypeURL {
		return nil, fmt.Errorf("type %q, want %s", a.GetTypeUrl(), SecretTypeURL)
	}
	sec := &tlsv3.Secret{}
	if err := a.UnmarshalTo(sec); err != nil {
		return nil, err
	}
	return sec, nil
}

func missing(r *Response, names []string) error {
	var miss []string
	for _, n := range names {
		if n == "*" {
			continue
		}
		if !slices.ContainsFunc(r.Secrets, func(s *tlsv3.Secret) bool { return s.GetName() == n }) {
			miss = append(miss, n)
		}
	}
	if len(miss) > 0 {
		return &MissingError{Names: miss}
	}
	return nil
}

func nack(names []string, nonce string, err error) *discoveryv3.DiscoveryRequest {
	return &discoveryv3.DiscoveryRequest{ResourceNames: names, TypeUrl: SecretTypeURL, ResponseNonce: nonce,
		ErrorDetail: statusProto(err)}
}
