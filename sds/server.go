package sds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// gRPC method names, as they appear in events.
const (
	MethodStream = "StreamSecrets"
	MethodDelta  = "DeltaSecrets"
	MethodFetch  = "FetchSecrets"
)

// DefaultMaxNames bounds the resource names of one request, and the names
// one stream subscribes to.
const DefaultMaxNames = 1000

// DefaultFetchWait is how long FetchSecrets waits for pending names.
const DefaultFetchWait = 5 * time.Second

// Config configures a Server. Only Secrets is required.
type Config struct {
	// Secrets returns the Source of the caller's secrets. It is called
	// once per stream, when its first request arrives (node is that
	// request's node, nil if it has none), and once per FetchSecrets. The
	// agent attests the caller here (its peer credentials are in ctx). An
	// error ends the stream or call: a gRPC status error as is (e.g.
	// PermissionDenied for an unattestable caller), any other as
	// Unavailable.
	Secrets func(ctx context.Context, node *corev3.Node) (Source, error)
	// Audit, when set, is called for every grant and every refusal of a
	// name to a caller (see AuditEvent for when exactly). It is called
	// synchronously from the stream's goroutines and must not block.
	Audit func(ctx context.Context, e AuditEvent)
	// OnRequest, when set, is called after each request has been handled
	// (including any response it caused), e.g. for metrics or tests. It
	// must not block.
	OnRequest func(ctx context.Context, e RequestEvent)
	// Log receives NACKs, refusals and errors. Nil discards.
	Log *slog.Logger
	// MaxNames bounds the names of a request and of a subscription;
	// requests over it fail with InvalidArgument. Zero means
	// DefaultMaxNames.
	MaxNames int
	// Workers bounds the goroutines that push changes to streams. They
	// run only while there is work. Zero means max(2, GOMAXPROCS).
	Workers int
	// FetchWait bounds how long FetchSecrets waits for pending names
	// before answering with what is granted. Zero means DefaultFetchWait.
	FetchWait time.Duration
}

// Decision is the outcome of an audited resolution.
type Decision string

// Decisions.
const (
	DecisionGrant  Decision = "grant"
	DecisionRefuse Decision = "refuse"
)

// AuditEvent is one grant or refusal of a resource name to a caller. On a
// stream it is emitted when a name is first decided and again whenever the
// decision flips (granted → refused or back), not for every rotation; a
// fetch emits one per name it decides.
type AuditEvent struct {
	Method   string
	StreamID uint64 // 0 for FetchSecrets
	NodeID   string
	Name     string
	Decision Decision
	Version  string // of the granted resource
	Reason   string // of a refusal, from the Source
}

// RequestKind classifies a request on a stream.
type RequestKind string

// Request kinds.
const (
	// RequestInitial is the first request of a stream (or a fetch).
	RequestInitial RequestKind = "initial"
	// RequestACK acknowledges the latest response.
	RequestACK RequestKind = "ack"
	// RequestNACK rejects the latest response (error_detail set).
	RequestNACK RequestKind = "nack"
	// RequestStale carries a nonce other than the latest response's.
	// SotW: ignored entirely. Delta: its subscription changes are applied
	// (they are deltas), but it acknowledges nothing.
	RequestStale RequestKind = "stale"
	// RequestUpdate is a request with no nonce after the first: a delta
	// spontaneous (un)subscription, or a SotW request before any response.
	RequestUpdate RequestKind = "update"
)

// RequestEvent describes a handled request.
type RequestEvent struct {
	Method   string
	StreamID uint64 // 0 for FetchSecrets
	NodeID   string
	Kind     RequestKind
	Nonce    string
	// Error is the error_detail message of a NACK.
	Error string
}

// Stats are counters since the server was made.
type Stats struct {
	// OpenStreams is the number of SotW and delta streams open now.
	OpenStreams int64
	Requests    uint64
	ACKs        uint64
	NACKs       uint64
	StaleNonces uint64
	// Responses counts responses sent (streams and fetches).
	Responses uint64
	// Resources counts resources sent; Removals names sent in
	// removed_resources.
	Resources uint64
	Removals  uint64
	Grants    uint64
	Refusals  uint64
	// SourceErrors counts Source errors met while pushing (the push is
	// dropped and logged; the next notification retries).
	SourceErrors uint64
}

type counters struct {
	open                                                                 atomic.Int64
	requests, acks, nacks, stale, responses, resources, removals, grants atomic.Uint64
	refusals, sourceErrors                                               atomic.Uint64
}

// Server implements envoy.service.secret.v3.SecretDiscoveryService:
// StreamSecrets, DeltaSecrets and FetchSecrets. See the package doc.
type Server struct {
	secretv3.UnimplementedSecretDiscoveryServiceServer

	cfg   Config
	log   *slog.Logger
	hub   *hub
	ids   atomic.Uint64
	stats counters
}

var _ secretv3.SecretDiscoveryServiceServer = (*Server)(nil)

// New validates cfg, fills its defaults and returns a Server. Call Close
// when done with it.
func New(cfg Config) (*Server, error) {
	if cfg.Secrets == nil {
		return nil, errors.New("sds: Config.Secrets is required")
	}
	if cfg.MaxNames < 0 || cfg.Workers < 0 || cfg.FetchWait < 0 {
		return nil, errors.New("sds: Config.MaxNames, Workers and FetchWait must not be negative")
	}
	if cfg.MaxNames == 0 {
		cfg.MaxNames = DefaultMaxNames
	}
	if cfg.Workers == 0 {
		cfg.Workers = max(2, runtime.GOMAXPROCS(0))
	}
	if cfg.FetchWait == 0 {
		cfg.FetchWait = DefaultFetchWait
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log.With("component", "sds")}
	s.hub = newHub(cfg.Workers)
	return s, nil
}

// Register registers the service on a gRPC server.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	secretv3.RegisterSecretDiscoveryServiceServer(r, s)
}

// Notify tells the server that the content behind the given topics has
// changed: every stream whose current answer depends on one of them (see
// [Result.Topics]) resolves its names again and is sent what changed —
// nothing if no version changed. Streams that depend on none of the topics
// are not woken. Call it after the change is visible to Source reads. It
// does not block on streams: pushes run on the server's workers.
func (s *Server) Notify(topics ...string) {
	s.hub.notify(topics)
}

// Close stops the push workers and waits for them. Notify does nothing
// afterwards. Streams are ended by stopping the gRPC server.
func (s *Server) Close() {
	s.hub.close()
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	c := &s.stats
	return Stats{
		OpenStreams: c.open.Load(), Requests: c.requests.Load(), ACKs: c.acks.Load(), NACKs: c.nacks.Load(),
		StaleNonces: c.stale.Load(), Responses: c.responses.Load(), Resources: c.resources.Load(),
		Removals: c.removals.Load(), Grants: c.grants.Load(), Refusals: c.refusals.Load(),
		SourceErrors: c.sourceErrors.Load(),
	}
}

func (s *Server) audit(ctx context.Context, evs []AuditEvent) {
	for _, e := range evs {
		if e.Decision == DecisionGrant {
			s.stats.grants.Add(1)
		} else {
			s.stats.refusals.Add(1)
			s.log.Info("sds refused", "method", e.Method, "stream", e.StreamID, "node", e.NodeID, "name", truncate(e.Name, 256), "reason", e.Reason)
		}
		if s.cfg.Audit != nil {
			s.cfg.Audit(ctx, e)
		}
	}
}

func (s *Server) onRequest(ctx context.Context, e RequestEvent) {
	if s.cfg.OnRequest != nil {
		s.cfg.OnRequest(ctx, e)
	}
}

// source calls Config.Secrets, mapping its error to a gRPC status.
func (s *Server) source(ctx context.Context, node *corev3.Node) (Source, error) {
	src, err := s.cfg.Secrets(ctx, node)
	if err != nil {
		return nil, grpcError(err, "secrets of caller")
	}
	if src == nil {
		return nil, status.Error(codes.Internal, "sds: no source for caller")
	}
	return src, nil
}

// grpcError passes gRPC status errors and context errors through and
// makes any other error Unavailable.
func grpcError(err error, what string) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Unavailable, fmt.Sprintf("sds: %s: %v", what, err))
}

// checkTypeURL accepts the Secret type URL, or none: for the singleton
// SDS service the type is implicit (xDS), and only ADS requires it.
func checkTypeURL(t string) error {
	if t == "" || t == SecretTypeURL {
		return nil
	}
	return status.Errorf(codes.InvalidArgument, "sds: type_url %q: this service serves only %s", truncate(t, 256), SecretTypeURL)
}

// checkNames bounds a list of names from a request.
func (s *Server) checkNames(field string, names []string) error {
	if len(names) > s.cfg.MaxNames {
		return status.Errorf(codes.InvalidArgument, "sds: %s has %d names, at most %d", field, len(names), s.cfg.MaxNames)
	}
	for _, n := range names {
		if n == "" {
			return status.Errorf(codes.InvalidArgument, "sds: %s has an empty name", field)
		}
		if len(n) > MaxNameBytes {
			return status.Errorf(codes.InvalidArgument, "sds: %s has a name of %d bytes, at most %d", field, len(n), MaxNameBytes)
		}
	}
	return nil
}
