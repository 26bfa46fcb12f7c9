package server

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/duration"
	"github.com/meshca/meshca/proto/nodepb"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/raftfsm"
	"github.com/meshca/meshca/server/cluster"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// JWT-SVID defaults and limits.
const (
	DefaultJWTSVIDTTL = 5 * time.Minute
	JWTKeyTTL         = 30 * 24 * time.Hour
	maxAudiences      = 10
	maxAudienceLen    = 256
)

// newJWTKey makes an ES256 JWT-SVID signing key in a state, sealed under
// the KEK.
func newJWTKey(kek *ca.KEK, now time.Time, state raftpb.AuthorityState) (*raftpb.JWTKey, error) {
	key, err := ca.ECDSA.GenerateKey()
	if err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, err
	}
	kid := cluster.NewRequestID()
	sealed, err := ca.SealKey(kek, ca.ECDSA, "jwt/"+kid, key)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(sealed)
	if err != nil {
		return nil, err
	}
	return &raftpb.JWTKey{Kid: kid, PublicKey: pub, SealedKey: b, CreatedUnix: now.Unix(), NotAfterUnix: now.Add(JWTKeyTTL).Unix(), State: state}, nil
}

// jwtSigner returns the newest active, unexpired JWT key, opened.
func (s *Server) jwtSigner(r *raftfsm.Reader) (string, crypto.Signer, error) {
	var best *raftpb.JWTKey
	now := s.cfg.Clock.Now().Unix()
	for _, k := range r.JWTKeys() {
		if raftfsm.JWTKeyActive(k) && k.NotAfterUnix > now && (best == nil || k.CreatedUnix > best.CreatedUnix) {
			best = k
		}
	}
	if best == nil {
		return "", nil, fmt.Errorf("no JWT-SVID signing key in the cluster state")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if signer, ok := s.jwtKeys[best.Kid]; ok {
		return best.Kid, signer, nil
	}
	var sk ca.SealedKey
	if err := json.Unmarshal(best.SealedKey, &sk); err != nil {
		return "", nil, fmt.Errorf("JWT key %s: %w", best.Kid, err)
	}
	signer, err := sk.Open(s.cfg.KEK)
	if err != nil {
		return "", nil, err
	}
	if s.jwtKeys == nil {
		s.jwtKeys = map[string]crypto.Signer{}
	}
	s.jwtKeys[best.Kid] = signer
	return best.Kid, signer, nil
}

// SignJWTSVID signs a JWT-SVID for an entry whose parent is the caller.
func (n *nodeService) SignJWTSVID(ctx context.Context, req *nodepb.SignJWTSVIDRequest) (*nodepb.SignJWTSVIDResponse, error) {
	agentID, err := n.s.requireAgent(ctx)
	if err != nil {
		return nil, err
	}
	if len(req.Audience) == 0 || len(req.Audience) > maxAudiences {
		return nil, status.Errorf(codes.InvalidArgument, "a JWT-SVID needs 1 to %d audiences", maxAudiences)
	}
	for _, a := range req.Audience {
		if a == "" || len(a) > maxAudienceLen {
			return nil, status.Errorf(codes.InvalidArgument, "audiences must be 1 to %d bytes", maxAudienceLen)
		}
	}
	r := n.s.fsm.Read()
	e := r.Entry(req.EntryId)
	if e == nil {
		// Created a moment ago through another server?
		if err := n.s.node.ReadIndex(ctx); err != nil {
			return nil, status.Errorf(codes.Unavailable, "%v", err)
		}
		r = n.s.fsm.Read()
		e = r.Entry(req.EntryId)
	}
	q := &Request{Kind: KindJWTSVID, Caller: &Caller{AgentID: agentID, Node: r.Node(agentID)}, Entry: e, EntryID: req.EntryId, Audience: req.Audience}
	if e != nil {
		entryTTL, err := duration.Seconds("entry ttl_seconds", e.TtlSeconds, 0, MaxEntryTTL)
		if err != nil {
			return nil, err
		}
		q.TTL = min(DefaultJWTSVIDTTL, entryTTL)
	}
	token, exp, err := n.s.issueJWT(ctx, q)
	if err != nil {
		return nil, err
	}
	return &nodepb.SignJWTSVIDResponse{Token: token, ExpiresUnix: exp.Unix()}, nil
}

// signJWT signs an authorized JWT-SVID request with the active JWT key.
func (s *Server) signJWT(r *Request) (string, time.Time, error) {
	kid, signer, err := s.jwtSigner(s.fsm.Read())
	if err != nil {
		return "", time.Time{}, status.Error(codes.Unavailable, err.Error())
	}
	priv, ok := signer.(*ecdsa.PrivateKey)
	if !ok {
		return "", time.Time{}, status.Error(codes.Internal, "JWT key is not ECDSA")
	}
	now := s.cfg.Clock.Now()
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: priv, KeyID: kid}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", time.Time{}, status.Error(codes.Internal, err.Error())
	}
	exp := now.Add(r.TTL)
	token, err := jwt.Signed(sig).Claims(jwt.Claims{Subject: r.SPIFFEID, Audience: jwt.Audience(r.Audience),
		IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(exp)}).Serialize()
	if err != nil {
		return "", time.Time{}, status.Error(codes.Internal, err.Error())
	}
	return token, exp, nil
}

// jwtAuthorities lists the JWT keys for bundles.
func jwtAuthorities(r *raftfsm.Reader) []*nodepb.JWTAuthority {
	var out []*nodepb.JWTAuthority
	for _, k := range r.JWTKeys() {
		if k.State == raftpb.AuthorityState_REVOKED {
			continue // issue 13: revoked keys leave every JWT bundle
		}
		out = append(out, &nodepb.JWTAuthority{Kid: k.Kid, PublicKey: k.PublicKey, Tainted: k.State == raftpb.AuthorityState_TAINTED})
	}
	return out
}
