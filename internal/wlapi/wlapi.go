// Package wlapi is a client of the SPIFFE Workload API of a meshca agent
// (or of any SPIFFE agent) on a Unix socket, for X509-SVIDs of both meshca
// profiles: what `meshca workload fetch`, `meshca dev` and the tunnel
// endpoint use, and what tests use to act as a workload.
//
// Standard clients (go-spiffe, spire-agent, Envoy) cannot parse SM2
// certificates, so a meshca agent serves SM2 SVIDs only to a client that
// names the profiles it can parse in the request metadata
// ProfilesMetadataKey; Config.Profiles sends it. Every SVID a Client
// returns has been checked: its chain parses (ECDSA or SM2), its leaf
// names the SVID's SPIFFE ID, its private key is the leaf's, and it comes
// with at least one root.
//
// The package depends on neither the agent nor the server.
package wlapi

import (
	"context"
	"crypto"
	"encoding/asn1"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/emmansun/gmsm/smx509"
	"github.com/meshca/meshca/ca"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// ProfilesMetadataKey is the gRPC request metadata key with which a client
// names the X.509 profiles it can parse, comma-separated ("ecdsa", "sm2",
// "ecdsa,sm2"). A meshca agent serves the SVIDs of those profiles only,
// and ECDSA ones to a client that does not send the key.
const ProfilesMetadataKey = "meshca-profiles"

// securityHeader is the request metadata every Workload API call carries;
// agents refuse calls without it (SPIFFE Workload API, section 6.2.1).
const securityHeader = "workload.spiffe.io"

// MaxMessageSize bounds a Workload API response a Client accepts.
const MaxMessageSize = 4 << 20

// Errors of CheckSocket, wrapped with the socket's path.
var (
	// ErrNoSocket means nothing exists at the socket path.
	ErrNoSocket = errors.New("wlapi: no Workload API socket")
	// ErrNotSocket means the path is not a Unix socket.
	ErrNotSocket = errors.New("wlapi: not a Unix socket")
	// ErrNotListening means the socket refuses connections: a socket file
	// left by an agent that is no longer running.
	ErrNotListening = errors.New("wlapi: nothing is listening on the Workload API socket")
)

// CheckSocket reports at once the usual reasons why socket cannot be the
// Workload API: ErrNoSocket, ErrNotSocket or ErrNotListening (wrapped), or
// another error of stat(2). It returns nil when a connection succeeds, or
// fails for another reason, which a request would report.
func CheckSocket(socket string) error {
	fi, err := os.Stat(socket)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w at %s", ErrNoSocket, socket)
	case err != nil:
		return fmt.Errorf("wlapi: Workload API socket %s: %w", socket, err)
	case fi.Mode().Type() != fs.ModeSocket:
		return fmt.Errorf("%w: %s", ErrNotSocket, socket)
	}
	c, err := net.Dial("unix", socket)
	if errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("%w: %s", ErrNotListening, socket)
	}
	if err == nil {
		c.Close()
	}
	return nil
}

// Config configures a Client.
type Config struct {
	// Socket is the path of the Workload API's Unix socket. Required.
	Socket string
	// Profiles are the X.509 profiles to ask for (ca.ProfileECDSA,
	// ca.ProfileSM2), sent as ProfilesMetadataKey. Default: none named,
	// so that the agent serves what every standard client gets (ECDSA).
	Profiles []string
}

// Client is a Workload API client on one socket. Its methods are safe for
// concurrent use; Close releases it.
type Client struct {
	cfg  Config
	conn *grpc.ClientConn
	api  workload.SpiffeWorkloadAPIClient
}

// New returns a client of the Workload API on cfg.Socket. It does not
// connect: each request does, so a client may be made before the agent
// listens.
func New(cfg Config) (*Client, error) {
	if cfg.Socket == "" {
		return nil, errors.New("wlapi: no socket path")
	}
	for _, p := range cfg.Profiles {
		if _, err := ca.ProfileByName(p); err != nil {
			return nil, fmt.Errorf("wlapi: %w", err)
		}
	}
	conn, err := grpc.NewClient("unix://"+cfg.Socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageSize)))
	if err != nil {
		return nil, fmt.Errorf("wlapi: Workload API socket %s: %w", cfg.Socket, err)
	}
	return &Client{cfg: cfg, conn: conn, api: workload.NewSpiffeWorkloadAPIClient(conn)}, nil
}

// Close closes the client's connection.
func (c *Client) Close() error { return c.conn.Close() }

// Socket is the socket the client asks.
func (c *Client) Socket() string { return c.cfg.Socket }

// outgoing adds the request metadata of every call to ctx.
func (c *Client) outgoing(ctx context.Context) context.Context {
	ctx = metadata.AppendToOutgoingContext(ctx, securityHeader, "true")
	if len(c.cfg.Profiles) > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, ProfilesMetadataKey, strings.Join(c.cfg.Profiles, ","))
	}
	return ctx
}

// Retry backoff of FetchX509SVIDs: it starts at retryMin and doubles up to
// retryMax.
const (
	retryMin = 100 * time.Millisecond
	retryMax = time.Second
)

// FetchX509SVIDs returns the caller's X509-SVIDs, in the agent's order. It
// retries while the agent is unavailable (Unavailable: not listening yet,
// no server) or has no SVID for the caller yet (PermissionDenied: not yet
// told about its entry, or none matches), until ctx ends. It returns the
// last attempt's error otherwise: a gRPC status error of the Workload API
// (status.FromError gives the agent's code and message), or an error that
// the response does not hold valid SVIDs.
func (c *Client) FetchX509SVIDs(ctx context.Context) ([]*SVID, error) {
	backoff := retryMin
	var refused error // the last answer that was retried
	for {
		svids, err := c.FetchX509SVIDsOnce(ctx)
		if err == nil {
			return svids, nil
		}
		if ctx.Err() != nil && refused != nil {
			// The deadline cut a retry short: what the agent last said
			// tells the caller more than the deadline does.
			return nil, refused
		}
		code := status.Code(err)
		if ctx.Err() != nil || (code != codes.Unavailable && code != codes.PermissionDenied) {
			return nil, err
		}
		refused = err
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
		backoff = min(2*backoff, retryMax)
	}
}

// FetchX509SVIDsOnce reads the first response of one FetchX509SVID stream.
// A response without SVIDs is a PermissionDenied error, as an agent that
// has none for the caller answers.
func (c *Client) FetchX509SVIDsOnce(ctx context.Context) ([]*SVID, error) {
	ctx, cancel := context.WithCancel(c.outgoing(ctx))
	defer cancel() // ends the stream
	stream, err := c.api.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		return nil, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	if len(resp.Svids) == 0 {
		return nil, status.Error(codes.PermissionDenied, "the agent answered with no X509-SVID")
	}
	svids := make([]*SVID, 0, len(resp.Svids))
	for i, s := range resp.Svids {
		v, err := ParseX509SVID(s)
		if err != nil {
			return nil, fmt.Errorf("X509-SVID %d from the Workload API (%s): %w", i, s.SpiffeId, err)
		}
		svids = append(svids, v)
	}
	return svids, nil
}

// SVID is one X509-SVID the Workload API returned, checked.
type SVID struct {
	// ID is the SPIFFE ID.
	ID string
	// Chain is the certificate chain, DER, leaf first.
	Chain [][]byte
	// Leaf is the parsed leaf, of either profile (Leaf.Profile).
	Leaf *ca.Certificate
	// KeyDER is the leaf's private key, PKCS#8 DER.
	KeyDER []byte
	// Roots are the trust domain's roots for the SVID's profile, DER.
	Roots [][]byte
}

// Pick returns svids with the SVID of id moved to the front, the others
// in order; ok is false when none is id's.
func Pick(svids []*SVID, id string) (_ []*SVID, ok bool) {
	for i, s := range svids {
		if s.ID == id {
			return append([]*SVID{s}, append(svids[:i:i], svids[i+1:]...)...), true
		}
	}
	return nil, false
}

// ParseX509SVID checks one X509-SVID of a Workload API response: a chain
// whose leaf, of either profile, names the SVID's SPIFFE ID, the leaf's
// private key, and at least one root.
func ParseX509SVID(s *workload.X509SVID) (*SVID, error) {
	chain, err := SplitDER(s.X509Svid)
	if err != nil || len(chain) == 0 {
		return nil, fmt.Errorf("certificate chain: %v", orEmpty(err))
	}
	leaf, err := ParseCertificate(chain[0])
	if err != nil {
		return nil, fmt.Errorf("leaf: %w", err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0] != s.SpiffeId {
		return nil, fmt.Errorf("the leaf names %v, not %s", leaf.URIs, s.SpiffeId)
	}
	key, err := smx509.ParsePKCS8PrivateKey(s.X509SvidKey) // both profiles
	if err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key: a %T", key)
	}
	if pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(leaf.PublicKey) {
		return nil, errors.New("the private key is not the leaf's")
	}
	roots, err := SplitDER(s.Bundle)
	if err != nil || len(roots) == 0 {
		return nil, fmt.Errorf("trust bundle: %v", orEmpty(err))
	}
	return &SVID{ID: s.SpiffeId, Chain: chain, Leaf: leaf, KeyDER: s.X509SvidKey, Roots: roots}, nil
}

func orEmpty(err error) error {
	if err == nil {
		return errors.New("empty")
	}
	return err
}

// SplitDER splits concatenated DER certificates, as the Workload API sends
// chains and bundles.
func SplitDER(b []byte) ([][]byte, error) {
	var out [][]byte
	for len(b) > 0 {
		var v asn1.RawValue
		rest, err := asn1.Unmarshal(b, &v)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(out)+1, err)
		}
		out = append(out, v.FullBytes)
		b = rest
	}
	return out, nil
}

// ParseCertificate parses a DER certificate of any profile.
func ParseCertificate(der []byte) (*ca.Certificate, error) {
	var errs []error
	for _, p := range ca.Profiles() {
		c, err := p.ParseCertificate(der)
		if err == nil {
			return c, nil
		}
		errs = append(errs, fmt.Errorf("as %s: %w", p.Name(), err))
	}
	return nil, errors.Join(errs...)
}
