// Package bench is meshca's issuance load generator, the engine of `meshca
// bench issue`: it runs out of process against servers a user already runs,
// as `etcdctl check perf` or `nats bench` do.
//
// In node mode it attests Agents agents with join tokens over the node API
// (each agent a TLS connection of its own, with its own SVID), creates one
// registration entry per agent, pre-generates CSRs, and drives Concurrency
// callers that each send Batch CSRs per SignX509SVIDs call, spread over the
// agents and the servers, for Warmup and then Duration. In mint mode the
// callers mint through the operator API instead (one CSR per call). It
// reports certificates per second, latency percentiles per call, errors,
// and the refusals it retried after the server's retry-after hint, and,
// for servers on this host, their CPU time per certificate and memory, from
// /proc. It deletes the entries it made when it ends.
//
// Every certificate counted was returned, so its ledger record was
// committed on a quorum: the figures are those of a user's renewals.
package bench

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshca/meshca/attest/jointoken"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/retryinfo"
	"github.com/meshca/meshca/internal/wallclock"
	"github.com/meshca/meshca/proto/nodepb"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// Mode is what the callers call.
type Mode string

// Modes.
const (
	// ModeNode calls the node API as attested agents (SignX509SVIDs).
	ModeNode Mode = "node"
	// ModeMint calls the operator API's MintX509SVID.
	ModeMint Mode = "mint"
)

// Defaults and bounds of a Config.
const (
	DefaultConcurrency = 32
	DefaultBatch       = 1
	DefaultDuration    = 10 * time.Second
	DefaultWarmup      = 2 * time.Second
	DefaultTTL         = time.Hour
	// DefaultSetupTimeout bounds a run's set-up.
	DefaultSetupTimeout = time.Minute
	// MaxBatch is the largest batch the agents' API takes per call.
	MaxBatch = 256
	// MaxAgents and MaxConcurrency bound what one run sets up.
	MaxAgents      = 4096
	MaxConcurrency = 4096
	// csrPool is how many distinct CSRs (and keys) a run generates; calls
	// reuse them, as the server signs each CSR afresh.
	csrPool = 256
	// errorPause is how long a caller waits after an error that carries
	// no retry-after hint, so that a failing server is not spun on.
	errorPause = 100 * time.Millisecond
	// maxSamples is how many distinct error messages a Result keeps.
	maxSamples = 5
)

// Config is one run. Fields documented with a default may be left zero.
type Config struct {
	// Operator is one server's operator API: the run makes its join tokens
	// and entries there (node mode), or mints through it (mint mode).
	Operator operatorpb.OperatorClient
	// Servers are the node API addresses (host:port) of the servers the
	// agents call (node mode): agent k attests to and calls Servers[k mod
	// len(Servers)], so the calls spread over all of them.
	Servers []string
	// Roots authenticate the servers (the trust bundle; node mode).
	Roots []*x509.Certificate
	// Mode is ModeNode (the default) or ModeMint.
	Mode Mode
	// Agents is the number of agents attested (node mode). Default:
	// Concurrency. Each agent is a node with its own signing budget on
	// the servers.
	Agents int
	// Concurrency is the number of callers, each with one call in flight.
	// Default DefaultConcurrency.
	Concurrency int
	// Batch is the number of CSRs per call, 1 to MaxBatch (mint mode: 1).
	// Default DefaultBatch.
	Batch int
	// Profile is "ecdsa" (the default) or "sm2".
	Profile string
	// Warmup runs the load before the measurement starts (none when
	// zero; `meshca bench issue` defaults to DefaultWarmup); Duration is
	// the measurement (default DefaultDuration).
	Warmup, Duration time.Duration
	// TTL is the lifetime of the certificates issued, and so how long
	// their ledger records stay on the servers (default DefaultTTL).
	TTL time.Duration
	// ServerPIDs are the processes of the servers when they run on this
	// host: their CPU time and memory are read from /proc (see LocalPIDs).
	ServerPIDs []int
	// Progress, when set, is called about once a second while the run
	// lasts.
	Progress func(Progress)
	// ProcRoot is where procfs is mounted. Default "/proc".
	ProcRoot string
	// SetupTimeout bounds the set-up (status, tokens, attestations,
	// entries) before the load starts. Default DefaultSetupTimeout.
	SetupTimeout time.Duration

	// attest, when set, replaces attest (tests: an answer lost after the
	// server used the token).
	attest func(ctx context.Context, addr string, td spiffeid.TrustDomain, bundle *x509bundle.Bundle, token string) (*x509svid.SVID, error)
}

// Progress is a snapshot of a running bench.
type Progress struct {
	Elapsed time.Duration `json:"elapsed"`
	// Warmup is set while the warm-up lasts.
	Warmup bool `json:"warmup"`
	// PerSecond is the certificates per second of the last interval.
	PerSecond float64 `json:"certs_per_second"`
	// Certificates, Errors and Retries count from the start of the run.
	Certificates int64 `json:"certificates"`
	Errors       int64 `json:"errors"`
	Retries      int64 `json:"retries"`
}

// Result is what a run measured, after the warm-up.
type Result struct {
	Mode        Mode     `json:"mode"`
	Profile     string   `json:"profile"`
	Servers     []string `json:"servers,omitempty"`
	Agents      int      `json:"agents,omitempty"`
	Concurrency int      `json:"concurrency"`
	Batch       int      `json:"batch"`
	// Seconds is the measured time.
	Seconds float64 `json:"seconds"`
	// Certificates issued (returned to the callers) while measured.
	Certificates int64   `json:"certificates"`
	PerSecond    float64 `json:"certs_per_second"`
	// Calls completed while measured, and their latencies in
	// milliseconds.
	Calls int64   `json:"calls"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	Max   float64 `json:"max_ms"`
	// Errors are failed calls and refused CSRs; Retries are calls refused
	// with ResourceExhausted and sent again after the server's hint. Both
	// count while measured. ErrorSamples are a few distinct messages.
	Errors       int64    `json:"errors"`
	Retries      int64    `json:"retries"`
	ErrorSamples []string `json:"error_samples,omitempty"`
	// Server is set when ServerPIDs were given.
	Server *ProcessFigures `json:"server,omitempty"`
	// Client is this process's own CPU while measured.
	Client *ProcessFigures `json:"client,omitempty"`
	// Cleanup says what the run could not undo (empty when all is undone).
	Cleanup []string `json:"cleanup,omitempty"`
}

// ProcessFigures are CPU and memory of processes while measured.
type ProcessFigures struct {
	PIDs []int `json:"pids"`
	// CPUSeconds is user + system CPU time, all processes together;
	// Cores is that over the measured time.
	CPUSeconds float64 `json:"cpu_seconds"`
	Cores      float64 `json:"cores"`
	// CPUPerCertificate is CPUSeconds per certificate, in microseconds.
	CPUPerCertificate float64 `json:"cpu_per_certificate_us"`
	// RSSBytes is the resident memory at the end, all processes together.
	RSSBytes int64 `json:"rss_bytes"`
	// Error says why the figures are incomplete, when they are.
	Error string `json:"error,omitempty"`
}

func (c *Config) check() error {
	if c.Mode == "" {
		c.Mode = ModeNode
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Batch == 0 {
		c.Batch = DefaultBatch
	}
	if c.Agents == 0 {
		c.Agents = c.Concurrency
	}
	if c.Profile == "" {
		c.Profile = ca.ProfileECDSA
	}
	if c.Duration == 0 {
		c.Duration = DefaultDuration
	}
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.ProcRoot == "" {
		c.ProcRoot = "/proc"
	}
	if c.SetupTimeout <= 0 {
		c.SetupTimeout = DefaultSetupTimeout
	}
	var errs []error
	if c.Operator == nil {
		errs = append(errs, errors.New("an operator API client is required"))
	}
	if _, err := ca.ProfileByName(c.Profile); err != nil {
		errs = append(errs, fmt.Errorf("profile %q: want %q or %q", c.Profile, ca.ProfileECDSA, ca.ProfileSM2))
	}
	if c.Concurrency < 1 || c.Concurrency > MaxConcurrency {
		errs = append(errs, fmt.Errorf("concurrency %d: want 1 to %d", c.Concurrency, MaxConcurrency))
	}
	if c.Warmup < 0 || c.Duration < time.Second {
		errs = append(errs, fmt.Errorf("duration %s and warm-up %s: want at least 1s of measurement and no negative warm-up", c.Duration, c.Warmup))
	}
	if c.TTL < time.Minute || c.TTL%time.Second != 0 {
		errs = append(errs, fmt.Errorf("TTL %s: want whole seconds, at least 1m", c.TTL))
	}
	switch c.Mode {
	case ModeNode:
		if len(c.Servers) == 0 {
			errs = append(errs, errors.New("node mode needs the node API address (host:port) of at least one server"))
		}
		if len(c.Roots) == 0 {
			errs = append(errs, errors.New("node mode needs the trust bundle (the roots) to authenticate the servers"))
		}
		if c.Batch < 1 || c.Batch > MaxBatch {
			errs = append(errs, fmt.Errorf("batch %d: want 1 to %d CSRs per call", c.Batch, MaxBatch))
		}
		if c.Agents < 1 || c.Agents > MaxAgents {
			errs = append(errs, fmt.Errorf("agents %d: want 1 to %d", c.Agents, MaxAgents))
		}
	case ModeMint:
		if c.Batch != 1 {
			errs = append(errs, fmt.Errorf("batch %d: a mint is one CSR per call", c.Batch))
		}
	default:
		errs = append(errs, fmt.Errorf("mode %q: want %q or %q", c.Mode, ModeNode, ModeMint))
	}
	return errors.Join(errs...)
}

// caller is one of the concurrent callers: call sends its request once.
type caller struct {
	call func(ctx context.Context) (certs int, refused []string, err error)
}

// counters are shared by the callers.
type counters struct {
	certs, errors, retries atomic.Int64
	// measured: counted only inside the measurement window.
	mCerts, mCalls, mErrors, mRetries atomic.Int64

	mu      sync.Mutex
	samples []string
}

func (c *counters) sample(msg string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.samples) < maxSamples && !slices.Contains(c.samples, msg) {
		c.samples = append(c.samples, msg)
	}
}

// Run sets up the run's agents and entries (node mode), drives the load,
// cleans up and returns what it measured. It ends early, with what it
// measured so far, when ctx ends during the measurement.
func Run(ctx context.Context, cfg Config) (res *Result, err error) {
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	profile, _ := ca.ProfileByName(cfg.Profile)
	setupCtx, cancel := context.WithTimeout(ctx, cfg.SetupTimeout)
	defer cancel()
	st, err := cfg.Operator.Status(setupCtx, &operatorpb.StatusRequest{})
	if err != nil {
		return nil, fmt.Errorf("bench: server status: %w", err)
	}
	td, err := spiffeid.TrustDomainFromString(st.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("bench: the server's trust domain %q: %w", st.TrustDomain, err)
	}
	runID := newRunID()
	csrs, err := makeCSRs(profile, min(csrPool, cfg.Concurrency*cfg.Batch))
	if err != nil {
		return nil, err
	}
	res = &Result{Mode: cfg.Mode, Profile: cfg.Profile, Concurrency: cfg.Concurrency, Batch: cfg.Batch}
	var callers []caller
	switch cfg.Mode {
	case ModeNode:
		res.Servers, res.Agents = cfg.Servers, cfg.Agents
		s, err := setUpAgents(setupCtx, &cfg, td, runID, profile)
		defer func() { res.Cleanup = append(res.Cleanup, s.cleanUp(cfg.Operator)...) }()
		if err != nil {
			return res, err
		}
		callers = s.nodeCallers(&cfg, csrs)
	case ModeMint:
		callers = mintCallers(&cfg, td, runID, csrs)
	}
	drive(ctx, &cfg, callers, res)
	return res, nil
}

func newRunID() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// makeCSRs generates n keys of profile and their CSRs.
func makeCSRs(p ca.Profile, n int) ([][]byte, error) {
	csrs := make([][]byte, n)
	for i := range csrs {
		key, err := p.GenerateKey()
		if err != nil {
			return nil, fmt.Errorf("bench: generate a key: %w", err)
		}
		if csrs[i], err = p.CreateCSR(key); err != nil {
			return nil, fmt.Errorf("bench: create a CSR: %w", err)
		}
	}
	return csrs, nil
}

// agent is one attested agent: its connection and its entry.
type agent struct {
	client  nodepb.NodeClient
	conn    *grpc.ClientConn
	entryID string
}

// setup is what a node-mode run made, to use and to undo.
type setup struct {
	agents []agent
	// unspent counts join tokens made and not consumed (an attestation
	// failed): they expire by themselves.
	unspent int
}

// setUpAgents attests cfg.Agents agents with join tokens, each to its
// server, and creates an entry for each.
func setUpAgents(ctx context.Context, cfg *Config, td spiffeid.TrustDomain, runID string, profile ca.Profile) (*setup, error) {
	s := &setup{}
	bundle := x509bundle.FromX509Authorities(td, cfg.Roots)
	for k := 0; k < cfg.Agents; k++ {
		addr := cfg.Servers[k%len(cfg.Servers)]
		svid, err := s.attestRetrying(ctx, cfg, addr, td, bundle)
		if err != nil {
			return s, fmt.Errorf("bench: attest agent %d to %s: %w", k, addr, err)
		}
		tlsCfg := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeMemberOf(td))
		tlsCfg.MinVersion = tls.VersionTLS13
		conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)),
			// As the agent: fixed windows, no bandwidth-probing PINGs.
			grpc.WithInitialWindowSize(1<<20), grpc.WithInitialConnWindowSize(1<<20))
		if err != nil {
			return s, fmt.Errorf("bench: node API at %s: %w", addr, err)
		}
		a := agent{client: nodepb.NewNodeClient(conn), conn: conn}
		s.agents = append(s.agents, a)
		en, err := cfg.Operator.CreateEntry(ctx, &operatorpb.CreateEntryRequest{Entry: &operatorpb.Entry{
			ParentId: svid.ID.String(), SpiffeId: td.IDString() + fmt.Sprintf("/meshca-bench/%s/%d", runID, k),
			Selectors: []*operatorpb.Selector{{Type: "unix", Value: fmt.Sprintf("uid:%d", 100000+k)}}, TtlSeconds: int64(cfg.TTL / time.Second),
			Profile: profile.Name(),
		}})
		if err != nil {
			return s, fmt.Errorf("bench: create the entry of agent %d: %w", k, err)
		}
		s.agents[len(s.agents)-1].entryID = en.Entry.Id
	}
	return s, nil
}

// attestRetry bounds how long setUpAgents waits for a server that is not
// ready to sign yet (just started: its intermediate's CRL not published,
// no leader yet), as a server answers with Unavailable.
const attestRetry = 30 * time.Second

// attestRetrying attests one agent with a join token, for up to
// attestRetry while the server answers Unavailable (not ready yet, or the
// outcome unknown). It tries the same token again: a server that was not
// ready did not consume it. Only if a retry finds it refused (an earlier
// attempt had used it after all) does it make a new one, so tokens are
// left unused only when the last attempt's outcome is unknown.
func (s *setup) attestRetrying(ctx context.Context, cfg *Config, addr string, td spiffeid.TrustDomain, bundle *x509bundle.Bundle) (*x509svid.SVID, error) {
	deadline := wallclock.Deadline(attestRetry) // real time: a wait for a server on the network
	attestFn := attest
	if cfg.attest != nil {
		attestFn = cfg.attest
	}
	token, retried := "", false
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 2*time.Second) {
		if token == "" {
			tok, err := cfg.Operator.CreateJoinToken(ctx, &operatorpb.CreateJoinTokenRequest{Kind: "agent", TtlSeconds: 600})
			if err != nil {
				return nil, fmt.Errorf("create a join token: %w", err)
			}
			token, retried = tok.Token, false
			s.unspent++
		}
		svid, err := attestFn(ctx, addr, td, bundle, token)
		switch code := status.Code(err); {
		case err == nil:
			s.unspent--
			return svid, nil
		case code == codes.PermissionDenied && retried:
			// Spent by the attempt before, whose answer was lost: the
			// token is used, not left behind.
			s.unspent--
			token = ""
			continue
		case code != codes.Unavailable || wallclock.Deadline(wait).After(deadline):
			return nil, err
		}
		retried = true
		t := wallclock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
	}
}

// attest attests an agent with a join token over the node API at addr and
// returns its SVID.
func attest(ctx context.Context, addr string, td spiffeid.TrustDomain, bundle *x509bundle.Bundle, token string) (*x509svid.SVID, error) {
	tlsCfg := tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeMemberOf(td))
	tlsCfg.MinVersion = tls.VersionTLS13
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	key, err := ca.ECDSA.GenerateKey()
	if err != nil {
		return nil, err
	}
	csr, err := ca.ECDSA.CreateCSR(key)
	if err != nil {
		return nil, err
	}
	ev := jointoken.NewEvidence(token)
	payload, err := ev.Payload()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	stream, err := nodepb.NewNodeClient(conn).Attest(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&nodepb.AttestRequest{Step: &nodepb.AttestRequest_Start{Start: &nodepb.AttestStart{Attestor: ev.Name(), Payload: payload, Csr: csr}}}); err != nil {
		return nil, err
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	var raw []byte
	for _, c := range resp.GetResult().GetSvidChain() {
		raw = append(raw, c...)
	}
	keyDER, err := ca.ECDSA.MarshalPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return x509svid.ParseRaw(raw, keyDER)
}

// cleanUp deletes the entries and closes the connections; it reports what
// it could not undo.
func (s *setup) cleanUp(op operatorpb.OperatorClient) []string {
	if s == nil {
		return nil
	}
	var left []string
	failed := 0
	for _, a := range s.agents {
		a.conn.Close()
		if a.entryID == "" {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if _, err := op.DeleteEntry(ctx, &operatorpb.DeleteEntryRequest{Id: a.entryID}); err != nil {
			failed++
			if failed == 1 {
				left = append(left, fmt.Sprintf("entry %s not deleted: %v", a.entryID, err))
			}
		}
		cancel()
	}
	if failed > 1 {
		left = append(left, fmt.Sprintf("%d entries not deleted in all", failed))
	}
	if s.unspent > 0 {
		left = append(left, fmt.Sprintf("%d join token(s) not used; they expire in 10 minutes", s.unspent))
	}
	if len(s.agents) > 0 {
		left = append(left, fmt.Sprintf("%d attested agents stay in the node list (they hold no entry now)", len(s.agents)))
	}
	return left
}

// nodeCallers are callers of the node API: caller i is agent i mod Agents,
// each call Batch CSRs of its agent's entry.
func (s *setup) nodeCallers(cfg *Config, csrs [][]byte) []caller {
	callers := make([]caller, cfg.Concurrency)
	next := 0
	for i := range callers {
		a := s.agents[i%len(s.agents)]
		req := &nodepb.SignX509SVIDsRequest{Requests: make([]*nodepb.SVIDRequest, cfg.Batch)}
		for k := range req.Requests {
			req.Requests[k] = &nodepb.SVIDRequest{EntryId: a.entryID, Csr: csrs[next%len(csrs)]}
			next++
		}
		callers[i] = caller{call: func(ctx context.Context) (int, []string, error) {
			resp, err := a.client.SignX509SVIDs(ctx, req)
			if err != nil {
				return 0, nil, err
			}
			certs := 0
			var refused []string
			for _, r := range resp.Results {
				if r.Error != "" {
					refused = append(refused, r.Error)
					continue
				}
				certs++
			}
			return certs, refused, nil
		}}
	}
	return callers
}

// mintCallers are callers of the operator API's MintX509SVID.
func mintCallers(cfg *Config, td spiffeid.TrustDomain, runID string, csrs [][]byte) []caller {
	callers := make([]caller, cfg.Concurrency)
	for i := range callers {
		req := &operatorpb.MintX509SVIDRequest{SpiffeId: td.IDString() + fmt.Sprintf("/meshca-bench/%s/mint/%d", runID, i),
			Csr: csrs[i%len(csrs)], Profile: cfg.Profile, TtlSeconds: int64(cfg.TTL / time.Second)}
		callers[i] = caller{call: func(ctx context.Context) (int, []string, error) {
			if _, err := cfg.Operator.MintX509SVID(ctx, req); err != nil {
				return 0, nil, err
			}
			return 1, nil, nil
		}}
	}
	return callers
}

// drive runs the callers for the warm-up and the measurement and fills res.
func drive(ctx context.Context, cfg *Config, callers []caller, res *Result) {
	start := time.Now()
	measureFrom := start.Add(cfg.Warmup)
	end := measureFrom.Add(cfg.Duration)
	ctx, cancel := context.WithDeadline(ctx, end)
	defer cancel()

	var c counters
	lat := make([][]time.Duration, len(callers))
	var wg sync.WaitGroup
	for i, cl := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				t0 := time.Now()
				certs, refused, err := cl.call(ctx)
				t1 := time.Now()
				measured := !t0.Before(measureFrom) && t1.Before(end)
				if err != nil {
					if ctx.Err() != nil || !t1.Before(end) {
						return // the run ended during the call (gRPC may see the deadline first)
					}
					pause := errorPause
					if hint, busy := retryinfo.After(err); busy {
						c.retries.Add(1)
						if measured {
							c.mRetries.Add(1)
						}
						pause = hint
					} else {
						c.errors.Add(1)
						if measured {
							c.mErrors.Add(1)
						}
						c.sample(err.Error())
					}
					select {
					case <-time.After(pause):
					case <-ctx.Done():
						return
					}
					continue
				}
				c.certs.Add(int64(certs))
				c.errors.Add(int64(len(refused)))
				for _, r := range refused {
					c.sample(r)
				}
				if !t1.Before(measureFrom) && t1.Before(end) {
					c.mCerts.Add(int64(certs))
					c.mErrors.Add(int64(len(refused)))
				}
				if measured {
					c.mCalls.Add(1)
					lat[i] = append(lat[i], t1.Sub(t0))
				}
			}
		}()
	}

	// The progress line, and the /proc samples at the window's edges.
	var serverFrom, clientFrom cpuSample
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	sampleStart := func() {
		serverFrom = readCPU(cfg.ProcRoot, cfg.ServerPIDs)
		clientFrom = readCPU(cfg.ProcRoot, []int{os.Getpid()})
	}
	var warmed <-chan time.Time // the end of the warm-up
	if cfg.Warmup > 0 {
		warm := time.NewTimer(cfg.Warmup)
		defer warm.Stop()
		warmed = warm.C
	} else {
		sampleStart()
	}
	lastCerts, lastAt := int64(0), start
	progress := func(now time.Time) {
		certs := c.certs.Load()
		if cfg.Progress != nil {
			cfg.Progress(Progress{Elapsed: now.Sub(start).Round(time.Second), Warmup: now.Before(measureFrom),
				PerSecond:    float64(certs-lastCerts) / now.Sub(lastAt).Seconds(),
				Certificates: certs, Errors: c.errors.Load(), Retries: c.retries.Load()})
		}
		lastCerts, lastAt = certs, now
	}
	var measuredEnd time.Time
loop:
	for {
		select {
		case <-warmed:
			sampleStart()
		case now := <-tick.C:
			progress(now)
		case <-ctx.Done():
			measuredEnd = time.Now()
			break loop
		}
	}
	serverTo, clientTo := readCPU(cfg.ProcRoot, cfg.ServerPIDs), readCPU(cfg.ProcRoot, []int{os.Getpid()})
	wg.Wait()

	if measuredEnd.After(end) {
		measuredEnd = end
	}
	res.Seconds = max(measuredEnd.Sub(measureFrom).Seconds(), 0)
	res.Certificates, res.Calls = c.mCerts.Load(), c.mCalls.Load()
	res.Errors, res.Retries = c.mErrors.Load(), c.mRetries.Load()
	res.ErrorSamples = c.samples
	if res.Seconds > 0 {
		res.PerSecond = float64(res.Certificates) / res.Seconds
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	if len(all) > 0 {
		slices.Sort(all)
		ms := func(d time.Duration) float64 { return math.Round(float64(d.Microseconds())) / 1000 }
		res.P50, res.P90, res.P99, res.Max = ms(all[len(all)*50/100]), ms(all[len(all)*90/100]), ms(all[len(all)*99/100]), ms(all[len(all)-1])
	}
	if res.Seconds == 0 {
		return // ended during the warm-up
	}
	if len(cfg.ServerPIDs) > 0 {
		res.Server = figures(cfg.ServerPIDs, serverFrom, serverTo, res)
	}
	res.Client = figures([]int{os.Getpid()}, clientFrom, clientTo, res)
}

func figures(pids []int, from, to cpuSample, res *Result) *ProcessFigures {
	f := &ProcessFigures{PIDs: pids, CPUSeconds: (to.cpu - from.cpu).Seconds(), RSSBytes: to.rss}
	if err := errors.Join(from.err, to.err); err != nil {
		f.Error = err.Error()
	}
	if res.Seconds > 0 {
		f.Cores = f.CPUSeconds / res.Seconds
	}
	if res.Certificates > 0 {
		f.CPUPerCertificate = math.Round(f.CPUSeconds/float64(res.Certificates)*1e7) / 10
	}
	return f
}
