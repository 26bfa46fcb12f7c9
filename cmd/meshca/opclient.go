package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshca/meshca/internal/naming"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/server"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// maxSocketPath is the longest Unix socket path Linux accepts (108 bytes
// with the terminating NUL in sun_path) and macOS (104).
const maxSocketPath = 103

// Bounds of the messages an operator command exchanges with a server.
const (
	opMaxMessage     = 8 << 20 // above the server's 1 MiB snapshot chunks
	opDefaultTimeout = time.Minute
)

// opOptions are the flags of every command that talks to a server.
type opOptions struct {
	addr    string
	timeout time.Duration
	// For an operator API over mutual TLS (--addr host:port): the
	// operator's X509-SVID and key, and the trust domain's roots.
	adminCert, adminKey, trustBundle string
}

// addOpFlags declares --addr, --timeout and the admin mTLS flags on cmd.
func addOpFlags(cmd *cobra.Command, o *opOptions) {
	cmd.Flags().StringVar(&o.addr, "addr", "", "server's operator API: unix:///path/admin.sock, or host:port over mutual TLS (default $"+envAddr+", else the admin socket in the default data directory)")
	cmd.Flags().DurationVar(&o.timeout, "timeout", opDefaultTimeout, "give up on the server after this long")
	addAdminTLSFlags(cmd, o)
}

// addAdminTLSFlags declares --admin-cert, --admin-key and --trust-bundle,
// the credentials of the operator API over mutual TLS.
func addAdminTLSFlags(cmd *cobra.Command, o *opOptions) {
	cmd.Flags().StringVar(&o.adminCert, "admin-cert", "", "with --addr host:port: PEM file of your admin X509-SVID (default $"+envAdminCert+")")
	cmd.Flags().StringVar(&o.adminKey, "admin-key", "", "with --addr host:port: PEM file of its private key (default $"+envAdminKey+")")
	cmd.Flags().StringVar(&o.trustBundle, "trust-bundle", "", "with --addr host:port: PEM file of the trust domain's roots (default $"+envTrustBundle+")")
}

// Environment defaults of the admin mTLS flags.
const (
	envAdminCert   = "MESHCA_ADMIN_CERT"
	envAdminKey    = "MESHCA_ADMIN_KEY"
	envTrustBundle = "MESHCA_TRUST_BUNDLE"
)

// errTCPAddr marks an operator address that is host:port.
type tcpAddr string

func (t tcpAddr) Error() string { return string(t) }

// dialOperatorTLS connects to a server's operator API over mutual TLS
// with the operator's admin X509-SVID, authenticating the server by its
// SPIFFE ID under the trust bundle.
func (a *app) dialOperatorTLS(addr string, o opOptions) (*opClient, error) {
	pick := func(flag, env string) string {
		if flag != "" {
			return flag
		}
		return a.getenv(env)
	}
	cert, key, bundleFile := pick(o.adminCert, envAdminCert), pick(o.adminKey, envAdminKey), pick(o.trustBundle, envTrustBundle)
	if cert == "" || key == "" || bundleFile == "" {
		return nil, usageErrorf("--addr %s is a TCP address: the operator API over mutual TLS needs --admin-cert, --admin-key and --trust-bundle (or $%s, $%s, $%s)", addr, envAdminCert, envAdminKey, envTrustBundle)
	}
	svid, err := x509svid.Load(cert, key)
	if err != nil {
		return nil, fmt.Errorf("admin SVID %s: %w", cert, err)
	}
	roots, err := server.LoadTrustBundle(bundleFile)
	if err != nil {
		return nil, err
	}
	td := svid.ID.TrustDomain()
	authorize := tlsconfig.AdaptMatcher(func(id spiffeid.ID) error {
		if !naming.IsServerID(td, id) {
			return fmt.Errorf("%s is not a server of %s", id, td.Name())
		}
		return nil
	})
	tlsCfg := tlsconfig.MTLSClientConfig(svid, x509bundle.FromX509Authorities(td, roots), authorize)
	tlsCfg.MinVersion = tls.VersionTLS13
	conn, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(opMaxMessage), grpc.MaxCallSendMsgSize(opMaxMessage)),
		grpc.WithChainUnaryInterceptor(retryUnavailable),
	)
	if err != nil {
		return nil, fmt.Errorf("operator API at %s: %w", addr, err)
	}
	return &opClient{OperatorClient: operatorpb.NewOperatorClient(conn), conn: conn, socket: addr, addr: addr, tcp: true}, nil
}

// opClient is a connection to a server's operator API.
type opClient struct {
	operatorpb.OperatorClient
	conn   *grpc.ClientConn
	socket string // the admin socket's path (or the TCP address), for error messages
	// addr is the operator address as the user writes it:
	// unix:///path/admin.sock or host:port.
	addr string
	tcp  bool // over mutual TLS to host:port
}

func (c *opClient) Close() error { return c.conn.Close() }

// adminSocketPath resolves the operator address: addr (the --addr flag),
// else $MESHCA_ADDR, else the admin socket of the default data directory.
// It accepts unix:///abs/path, unix:path and an absolute path; a host:port
// is returned as a tcpAddr error, for dialOperator to use mutual TLS.
func (a *app) adminSocketPath(addr string) (string, error) {
	source := "--addr"
	if addr == "" {
		addr, source = a.getenv(envAddr), envAddr
	}
	if addr == "" {
		dir, err := defaultDataDir(a.getenv)
		if err != nil {
			return "", fmt.Errorf("no server address: %w", err)
		}
		return server.DefaultAdminSocket(dir), nil
	}
	var path string
	switch {
	case strings.HasPrefix(addr, "unix://"):
		path = strings.TrimPrefix(addr, "unix://")
		if !strings.HasPrefix(path, "/") {
			return "", usageErrorf("%s %q: want unix:///absolute/path/admin.sock (three slashes)", source, addr)
		}
	case strings.HasPrefix(addr, "unix:"):
		path = strings.TrimPrefix(addr, "unix:")
	case strings.HasPrefix(addr, "/"):
		path = addr
	default:
		if _, port, err := net.SplitHostPort(addr); err == nil && port != "" && !strings.Contains(addr, "://") {
			return "", tcpAddr(addr)
		}
		return "", usageErrorf("%s %q: want unix:///path/%s", source, addr, server.AdminSocketName)
	}
	if path == "" {
		return "", usageErrorf("%s %q: the socket path is empty", source, addr)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", source, addr, err)
	}
	return abs, nil
}

// dialOperator connects to the operator API of the server at o.addr. The
// socket is checked first so that the usual mistakes get a clear message.
func (a *app) dialOperator(o opOptions) (*opClient, error) {
	path, err := a.adminSocketPath(o.addr)
	var tcp tcpAddr
	if errors.As(err, &tcp) {
		return a.dialOperatorTLS(string(tcp), o)
	}
	if err != nil {
		return nil, err
	}
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("admin socket path %s is %d bytes, longer than Unix sockets allow (%d): start the server with a shorter --admin-socket", path, len(path), maxSocketPath)
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, unreachable(path, "it does not exist")
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("cannot reach the server's admin socket at %s: permission denied; only the user the server runs as may use it", path)
	case err != nil:
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	case fi.Mode().Type() != fs.ModeSocket:
		return nil, fmt.Errorf("%s is not a Unix socket: give the server's admin socket with --addr unix:///<data-dir>/%s", path, server.AdminSocketName)
	}
	conn, err := grpc.NewClient("unix://"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(opMaxMessage), grpc.MaxCallSendMsgSize(opMaxMessage)),
		grpc.WithChainUnaryInterceptor(retryUnavailable),
	)
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	return &opClient{OperatorClient: operatorpb.NewOperatorClient(conn), conn: conn, socket: path, addr: "unix://" + path}, nil
}

// unreachable is the error for a server that does not answer on its socket.
func unreachable(path, why string) error {
	return codedErrorf(codes.Unavailable, "cannot reach the server's admin socket at %s (%s): is `meshca server` running? Give its socket with --addr unix:///<data-dir>/%s or $%s", path, why, server.AdminSocketName, envAddr)
}

// callContext bounds one operator call by --timeout.
// operatorCall checks o, dials the admin socket and returns a client, a
// context bounded by --timeout, and a func that releases both.
func (a *app) operatorCall(cmd *cobra.Command, o opOptions) (context.Context, *opClient, func(), error) {
	if err := checkTimeout(o); err != nil {
		return nil, nil, nil, err
	}
	c, err := a.dialOperator(o)
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := callContext(cmd.Context(), o)
	return ctx, c, func() { cancel(); c.Close() }, nil
}

func callContext(ctx context.Context, o opOptions) (context.Context, context.CancelFunc) {
	if o.timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, o.timeout)
}

// checkTimeout refuses a --timeout that is not positive.
func checkTimeout(o opOptions) error {
	if o.timeout <= 0 {
		return usageErrorf("--timeout %s: want a positive duration", o.timeout)
	}
	return nil
}

// callError turns the error of an operator call into a message for the
// operator: what failed, and the server's reason without gRPC's wrapping.
// The error carries the call's status code, for --output json.
func (c *opClient) callError(what string, o opOptions, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		if errors.Is(err, context.DeadlineExceeded) {
			return codedErrorf(codes.DeadlineExceeded, "%s: the server did not answer within %s (--timeout)", what, o.timeout)
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	msg, code := st.Message(), st.Code()
	switch code {
	case codes.Unavailable:
		if c.isDialFailure(msg) {
			if strings.Contains(msg, "permission denied") {
				return codedErrorf(codes.PermissionDenied, "cannot open the server's admin socket at %s: permission denied; only the user the server runs as may use it (mode 0600)", c.socket)
			}
			return unreachable(c.socket, "nothing is listening on it")
		}
		return codedErrorf(code, "%s: %s (the server or its cluster is unavailable; see meshca status)", what, msg)
	case codes.DeadlineExceeded:
		return codedErrorf(code, "%s: the server did not answer within %s (--timeout); the cluster may have no leader", what, o.timeout)
	case codes.Canceled:
		return codedErrorf(code, "%s: cancelled", what)
	case codes.Unimplemented:
		if c.tcp {
			return codedErrorf(code, "%s: %s does not serve the operator API: is it the server's --api-addr (agents' and servers' API)? Give the server's --admin-addr, or its admin socket unix:///<data-dir>/%s", what, c.addr, server.AdminSocketName)
		}
		return codedErrorf(code, "%s: this server does not support it (is it an older meshca?): %s", what, msg)
	}
	return codedErrorf(code, "%s: %s", what, msg)
}

// isDialFailure reports whether a gRPC Unavailable message says that
// connecting to the admin socket itself failed. The server's own
// Unavailable errors (no leader, a peer unreachable) do not name the socket.
func (c *opClient) isDialFailure(msg string) bool {
	return strings.Contains(msg, "dial unix "+c.socket)
}
