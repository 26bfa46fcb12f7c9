package server

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/alarm"
	"github.com/meshca/meshca/internal/atomicfile"
	"github.com/meshca/meshca/proto/clusterpb"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/raftfsm"
	"github.com/meshca/meshca/server/cluster"
	"github.com/meshca/meshca/server/joinsecret"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Join token kinds.
const (
	TokenKindServer = "server"
	TokenKindAgent  = "agent"
)

// maxTokenLen bounds a join token in a request.
const maxTokenLen = 256

// joinAttempt is what a joining server keeps on disk until it has an
// identity: its attempt ID and the keys of its intermediates. A join whose
// answer was lost (a leader change, a crash) is repeated with the same
// attempt and keys, and the cluster, which consumed the token the first
// time, admits the same attempt again.
type joinAttempt struct {
	AttemptID string                   `json:"attempt_id"`
	Keys      map[string]*ca.SealedKey `json:"keys"`
}

// loadJoinAttempt reads the pending join attempt, or starts one and saves
// it before anything is sent.
func loadJoinAttempt(cfg *Config) (*joinAttempt, error) {
	path := joinAttemptPath(cfg.DataDir)
	if b, err := os.ReadFile(path); err == nil {
		var ja joinAttempt
		if err := json.Unmarshal(b, &ja); err != nil || ja.AttemptID == "" {
			return nil, fmt.Errorf("join attempt %s is corrupt (remove it to start over): %v", path, err)
		}
		return &ja, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("join attempt: %w", err)
	}
	ja := &joinAttempt{AttemptID: cluster.NewRequestID(), Keys: map[string]*ca.SealedKey{}}
	for _, p := range ca.Profiles() {
		key, err := p.GenerateKey()
		if err != nil {
			return nil, err
		}
		if ja.Keys[p.Name()], err = ca.SealKey(cfg.KEK, p, p.Name()+"/intermediate", key); err != nil {
			return nil, err
		}
	}
	b, err := json.MarshalIndent(ja, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("join attempt: %w", err)
	}
	if err := atomicfile.Write(path, b, 0o600); err != nil {
		return nil, fmt.Errorf("join attempt: %w", err)
	}
	return ja, nil
}

// join obtains this server's identity from the cluster: it sends CSRs for
// its own intermediates to cfg.Join with the join token, authenticating the
// member it talks to with the trust bundle; or, with a server-join secret
// file and no token, with a proof that it holds the file's first secret,
// authenticating the member by its proof of the same secret (and by the
// trust bundle too when it has one).
func (s *Server) join() (*identity, error) {
	cfg := &s.cfg
	var secret *joinsecret.Secret
	if cfg.JoinToken == "" {
		secrets, err := joinsecret.Load(cfg.ServerJoinSecretFile)
		if err != nil {
			return nil, err
		}
		secret = &secrets[0]
	}
	var td spiffeid.TrustDomain
	var err error
	if len(cfg.TrustBundle) > 0 {
		if td, err = ca.TrustDomainOfRoots(cfg.TrustBundle); err != nil {
			return nil, err
		}
		if cfg.TrustDomain != "" && cfg.TrustDomain != td.Name() {
			return nil, fmt.Errorf("the trust bundle is of trust domain %q, not %q", td.Name(), cfg.TrustDomain)
		}
	} else if td, err = spiffeid.TrustDomainFromString(cfg.TrustDomain); err != nil {
		return nil, fmt.Errorf("join: trust domain: %w", err)
	}
	ja, err := loadJoinAttempt(cfg)
	if err != nil {
		return nil, err
	}
	keys := map[string]crypto.Signer{}
	req := &clusterpb.JoinRequest{Token: cfg.JoinToken, NodeId: cfg.NodeID, RaftAddr: cfg.RaftAddr, ApiAddr: cfg.APIAddr,
		IntermediateCsrs: map[string][]byte{}, KekId: cfg.KEK.ID(), AttemptId: ja.AttemptID}
	for _, p := range ca.Profiles() {
		if ja.Keys[p.Name()] == nil {
			return nil, fmt.Errorf("join attempt %s has no %s key (remove it to start over)", joinAttemptPath(cfg.DataDir), p.Name())
		}
		key, err := ja.Keys[p.Name()].Open(cfg.KEK)
		if err != nil {
			return nil, fmt.Errorf("join attempt: %w", err)
		}
		csr, err := p.CreateCSR(key)
		if err != nil {
			return nil, err
		}
		keys[p.Name()], req.IntermediateCsrs[p.Name()] = key, csr
	}
	dial := cfg.Dial
	// A member whose certificate the trust bundle does not vouch for is a
	// refusal, not an outage: the join ends at once, saying so.
	var tlsCfg *tls.Config
	var untrusted atomic.Pointer[error]
	if len(cfg.TrustBundle) > 0 {
		tlsCfg = cluster.JoinClientTLS(td, cfg.TrustBundle, cfg.Clock)
		verify := tlsCfg.VerifyPeerCertificate
		tlsCfg.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
			err := verify(raw, chains)
			if err != nil {
				untrusted.Store(&err)
			}
			return err
		}
	} else {
		// Authenticated after the call: by the member's proof of the
		// secret over this connection, then its certificate against the
		// roots it sent.
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS13, Time: cfg.Clock.Now, InsecureSkipVerify: true}
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg))}
	if secret != nil {
		opts = append(opts, grpc.WithPerRPCCredentials(joinProofCreds{secret: *secret}))
	}
	if dial != nil {
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return dial(ctx, a) }))
	}
	conn, err := grpc.NewClient("passthrough:///"+cfg.Join, opts...)
	if err != nil {
		return nil, fmt.Errorf("join %s: %w", cfg.Join, err)
	}
	defer conn.Close()
	var member peer.Peer
	resp, err := s.joinWithRetry(clusterpb.NewClusterClient(conn), req, func() error {
		if e := untrusted.Load(); e != nil {
			return *e
		}
		return nil
	}, grpc.Peer(&member))
	if err != nil {
		return nil, err
	}
	if secret != nil {
		if err := checkMemberProof(*secret, &member, resp); err != nil {
			return nil, fmt.Errorf("join %s: %w", cfg.Join, err)
		}
	}
	if resp.TrustDomain != td.Name() {
		return nil, fmt.Errorf("join %s: cluster answered for trust domain %q, the bundle is of %q", cfg.Join, resp.TrustDomain, td.Name())
	}
	id := &identity{Version: identityVersion, NodeID: cfg.NodeID, TrustDomain: td.Name(), KEKID: cfg.KEK.ID(),
		Roots: map[string][]byte{}, RootKeys: map[string]*ca.SealedKey{}, Intermediates: map[string]*localIntermediate{},
		Prepared: map[string]*localIntermediate{}, Old: map[string][]*localIntermediate{}}
	for name, der := range resp.Roots {
		if _, err := ca.ProfileByName(name); err != nil {
			return nil, fmt.Errorf("join %s: root of %w", cfg.Join, err)
		}
		id.Roots[name] = der
	}
	for _, p := range ca.Profiles() {
		root, err := p.ParseCertificate(id.Roots[p.Name()])
		if err != nil {
			return nil, fmt.Errorf("join: %s root: %w", p.Name(), err)
		}
		inter, err := p.ParseCertificate(resp.Intermediates[p.Name()])
		if err != nil {
			return nil, fmt.Errorf("join: %s intermediate: %w", p.Name(), err)
		}
		// The intermediate must certify our key and come from the root; the
		// ECDSA root must be one of the bundle we were given.
		if _, err := ca.NewAuthority(ca.AuthorityConfig{Profile: p, TrustDomain: td, Certificate: inter, Signer: keys[p.Name()], Upstream: nil}); err != nil {
			return nil, fmt.Errorf("join: %s intermediate: %w", p.Name(), err)
		}
		if err := ca.CheckSignedBy(inter, root); err != nil {
			return nil, fmt.Errorf("join: %s intermediate is not signed by the root: %w", p.Name(), err)
		}
		id.Intermediates[p.Name()] = &localIntermediate{Certificate: inter.Raw, Key: ja.Keys[p.Name()]}
	}
	if len(cfg.TrustBundle) == 0 {
		// Vouched for by the member's proof of the secret; its own
		// certificate must chain to them too.
		root, err := x509.ParseCertificate(id.Roots[ca.ProfileECDSA])
		if err != nil {
			return nil, fmt.Errorf("join %s: ECDSA root: %w", cfg.Join, err)
		}
		info, _ := member.AuthInfo.(credentials.TLSInfo)
		var raw [][]byte
		for _, c := range info.State.PeerCertificates {
			raw = append(raw, c.Raw)
		}
		if err := cluster.JoinClientTLS(td, []*x509.Certificate{root}, cfg.Clock).VerifyPeerCertificate(raw, nil); err != nil {
			return nil, fmt.Errorf("join %s: the member's certificate does not chain to the roots it sent: %w", cfg.Join, err)
		}
	} else if !bundleHas(cfg.TrustBundle, id.Roots[ca.ProfileECDSA]) {
		return nil, fmt.Errorf("join %s: the cluster's ECDSA root is not in the trust bundle (was the root rotated since the bundle was taken? take it from a member again)", cfg.Join)
	} else {
		// Every root of the bundle, until the replicated state is replayed
		// (issue 13 roots: during a rotation members may present chains
		// of the other root).
		for _, c := range cfg.TrustBundle {
			id.PeerRoots = append(id.PeerRoots, c.Raw)
		}
	}
	a, err := id.authority(ca.ProfileECDSA, cfg.KEK, cfg.Clock)
	if err != nil {
		return nil, err
	}
	if err := id.issueServerCertificate(cfg.KEK, a); err != nil {
		return nil, err
	}
	how := "join token"
	if secret != nil {
		how = "server-join secret " + secret.ID
	}
	s.log.Info("joined the cluster", "via", cfg.Join, "trust_domain", td.Name(), "with", how)
	return id, nil
}

// finishJoin removes the join attempt once the identity is saved.
func finishJoin(dataDir string) error {
	if err := os.Remove(joinAttemptPath(dataDir)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("join attempt: %w", err)
	}
	return nil
}

// joinAttemptTimeout bounds one Join call: the leader signs intermediates
// and commits several commands.
const joinAttemptTimeout = time.Minute

// joinWithRetry sends req (the same request, keys and CSRs each time)
// until the cluster admits or refuses this server. While the member cannot
// be reached, is still bootstrapping or has no leader (Unavailable), or an
// attempt times out, it waits and tries again, for up to cfg.JoinTimeout;
// untrusted reports a member the trust bundle does not vouch for, which
// ends the join at once.
func (s *Server) joinWithRetry(client clusterpb.ClusterClient, req *clusterpb.JoinRequest, untrusted func() error, opts ...grpc.CallOption) (*clusterpb.JoinResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.JoinTimeout)
	defer cancel()
	for wait := 200 * time.Millisecond; ; wait = min(wait*2, 5*time.Second) {
		actx, acancel := context.WithTimeout(ctx, joinAttemptTimeout)
		resp, err := client.Join(actx, req, opts...)
		acancel()
		if err == nil {
			return resp, nil
		}
		switch code := status.Code(err); {
		case untrusted() != nil:
			return nil, fmt.Errorf("join %s: the member is not a server of the cluster the trust bundle names: %w", s.cfg.Join, untrusted())
		case code != codes.Unavailable && code != codes.DeadlineExceeded:
			return nil, fmt.Errorf("join %s: %w", s.cfg.Join, err)
		case ctx.Err() != nil:
			return nil, fmt.Errorf("join %s: the cluster did not admit this server within %s (join timeout): %w", s.cfg.Join, s.cfg.JoinTimeout, err)
		}
		s.log.Info("the cluster cannot admit this server yet; retrying", "via", s.cfg.Join, "reason", status.Convert(err).Message(), "retry_in", wait)
		if alarm.Sleep(ctx, s.cfg.Clock, wait) != nil {
			return nil, fmt.Errorf("join %s: the cluster did not admit this server within %s (join timeout): %w", s.cfg.Join, s.cfg.JoinTimeout, err)
		}
	}
}

func bundleHas(bundle []*x509.Certificate, der []byte) bool {
	for _, c := range bundle {
		if string(c.Raw) == string(der) {
			return true
		}
	}
	return false
}

// handleJoin admits a new server. Everything is checked and signed before
// the token is consumed, so a bad request does not burn the token; the
// token is consumed in the same Raft command that records the server and
// its intermediates (AdmitServer), so it admits one server exactly once,
// and the same joining attempt again if its answer was lost.
func (s *Server) handleJoin(ctx context.Context, req *clusterpb.JoinRequest) (*clusterpb.JoinResponse, error) {
	from := ""
	if p, ok := peer.FromContext(ctx); ok {
		from = p.Addr.String()
	}
	deny := func(code codes.Code, reason string) error {
		s.events.Record(audit.Event{Actor: from, Action: "server.join", Subject: req.NodeId, Decision: audit.Deny, Reason: reason})
		return status.Error(code, reason)
	}
	switch {
	case !ValidNodeID(req.NodeId):
		return nil, deny(codes.InvalidArgument, fmt.Sprintf("node ID %q: use 1-64 letters, digits, '.', '-' or '_'", req.NodeId))
	case req.SecretVerified && req.Token != "":
		return nil, deny(codes.InvalidArgument, "a join token or a server-join secret, not both")
	case req.SecretVerified:
	case len(req.Token) == 0 || len(req.Token) > maxTokenLen:
		return nil, deny(codes.InvalidArgument, "a server join token (or a server-join secret) is required")
	case CheckJoinToken(req.Token) != nil:
		return nil, deny(codes.InvalidArgument, CheckJoinToken(req.Token).Error())
	case !validHostPort(req.RaftAddr) || !validHostPort(req.ApiAddr):
		return nil, deny(codes.InvalidArgument, "raft and API addresses must be host:port")
	case len(req.AttemptId) > maxTokenLen:
		return nil, deny(codes.InvalidArgument, "attempt ID too long")
	}
	if !s.node.IsLeader() {
		client, err := s.node.LeaderClient()
		if err != nil {
			return nil, status.Error(codes.Unavailable, "no leader to admit the server; retry")
		}
		return client.Join(ctx, req)
	}
	if err := s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "read the cluster state: %v", err)
	}
	r := s.fsm.Read()
	td := r.TrustDomain()
	hash := sha256.Sum256([]byte(req.Token))
	again := false
	if req.SecretVerified {
		if cur := r.Server(req.NodeId); cur != nil && req.AttemptId != "" && cur.JoinAttempt == req.AttemptId {
			again = true // the same attempt, whose answer was lost
		}
	} else if t := r.JoinToken(hash[:]); t != nil && req.AttemptId != "" && t.ConsumedAttempt == req.AttemptId && t.ConsumedBy == req.NodeId {
		again = true
	}
	switch {
	case td == nil:
		return nil, status.Error(codes.Unavailable, "the cluster is still bootstrapping; retry")
	case req.KekId != td.KekId:
		return nil, deny(codes.PermissionDenied, "the joining server's key-encryption key differs from the cluster's: every server needs the same KEK")
	case r.Server(req.NodeId) != nil && !again:
		return nil, deny(codes.AlreadyExists, fmt.Sprintf("a server named %q is already a member", req.NodeId))
	}
	now := s.cfg.Clock.Now()
	roots := map[string][]byte{}
	admit := &raftpb.AdmitServer{
		Server: &raftpb.Server{NodeId: req.NodeId, RaftAddr: req.RaftAddr, ApiAddr: req.ApiAddr, JoinedUnixNano: now.UnixNano()},
	}
	details := map[string]string{"raft_addr": req.RaftAddr, "again": strconv.FormatBool(again)}
	if req.SecretVerified {
		admit.JoinSecretId, admit.Server.JoinAttempt = req.SecretId, req.AttemptId
		details["server_join_secret"] = req.SecretId
	} else {
		admit.Token = &raftpb.ConsumeJoinToken{Hash: hash[:], Kind: TokenKindServer, Consumer: req.NodeId, Attempt: req.AttemptId}
	}
	resp := &clusterpb.JoinResponse{TrustDomain: s.td.Name(), Intermediates: map[string][]byte{}, Roots: roots}
	for _, p := range ca.Profiles() {
		rootRec, rootKey, err := s.activeRoot(r, p.Name())
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		root, err := p.ParseCertificate(rootRec.Certificate)
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		inter, err := s.joiningIntermediate(r, p, req.NodeId, req.IntermediateCsrs[p.Name()], root, rootKey, now)
		if err != nil {
			return nil, deny(codes.InvalidArgument, fmt.Sprintf("%s intermediate CSR: %v", p.Name(), err))
		}
		roots[p.Name()] = root.Raw
		admit.Intermediates = append(admit.Intermediates, intermediateRecord(inter, rootRec.Id, req.NodeId, raftpb.AuthorityState_ACTIVE))
		resp.Intermediates[p.Name()] = inter.Raw
	}
	_, err := s.node.Apply(ctx, &raftpb.Command{Op: &raftpb.Command_AdmitServer{AdmitServer: admit}})
	var fsmErr *raftfsm.Error
	switch {
	case errors.Is(err, raftfsm.ErrAlreadyExists):
		return nil, deny(codes.AlreadyExists, fmt.Sprintf("a server named %q is already a member", req.NodeId))
	case errors.As(err, &fsmErr) && req.SecretVerified:
		return nil, deny(codes.PermissionDenied, "admission refused: "+fsmErr.Msg)
	case errors.As(err, &fsmErr):
		return nil, deny(codes.PermissionDenied, "the join token is unknown, already used, expired, or not a server token ("+fsmErr.Msg+")")
	case err != nil:
		return nil, status.Errorf(codes.Unavailable, "record the new server: %v", err)
	}
	// As a non-voter: the joining server's Raft starts only once this
	// returns; it promotes itself when it has caught up (keepMembership).
	if err := s.node.AddNonvoter(ctx, req.NodeId, req.RaftAddr); err != nil {
		return nil, status.Errorf(codes.Unavailable, "add %s to the Raft configuration: %v", req.NodeId, err)
	}
	s.events.Record(audit.Event{Actor: from, Action: "server.join", Subject: req.NodeId, Decision: audit.Allow, Details: details})
	return resp, nil
}

// joiningIntermediate certifies a joining server's intermediate CSR; a key
// certified for it before (its first answer was lost) gets the same
// certificate.
func (s *Server) joiningIntermediate(r *raftfsm.Reader, p ca.Profile, nodeID string, csr []byte, root *ca.Certificate, rootKey crypto.Signer, now time.Time) (*ca.Certificate, error) {
	spki, err := ca.CSRPublicKey(p, csr)
	if err != nil {
		return nil, err
	}
	for _, a := range r.Authorities() {
		if a.Kind == raftpb.AuthorityKind_INTERMEDIATE && a.ServerId == nodeID && a.Profile == p.Name() {
			if c, err := p.ParseCertificate(a.Certificate); err == nil && bytes.Equal(c.RawSubjectPublicKeyInfo, spki) {
				return c, nil
			}
		}
	}
	return ca.SignIntermediateCSR(ca.CAParams{Profile: p, TrustDomain: s.td, Name: "intermediate " + nodeID, Now: now, TTL: s.cfg.IntermediateTTL}, csr, root, rootKey)
}

func validHostPort(a string) bool {
	h, p, err := net.SplitHostPort(a)
	return err == nil && h != "" && p != ""
}

// activeRoot finds a profile's active root in the state and opens its key.
func (s *Server) activeRoot(r *raftfsm.Reader, profile string) (*raftpb.Authority, crypto.Signer, error) {
	for _, a := range r.Authorities() {
		if a.Profile != profile || a.Kind != raftpb.AuthorityKind_ROOT || a.State != raftpb.AuthorityState_ACTIVE {
			continue
		}
		var sk ca.SealedKey
		if err := json.Unmarshal(a.SealedKey, &sk); err != nil {
			return nil, nil, fmt.Errorf("root %s: sealed key: %w", a.Id, err)
		}
		key, err := sk.Open(s.cfg.KEK)
		if err != nil {
			return nil, nil, fmt.Errorf("root %s: %w", a.Id, err)
		}
		return a, key, nil
	}
	return nil, nil, fmt.Errorf("no active %s root in the cluster state", profile)
}
