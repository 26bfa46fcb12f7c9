package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/meshca/meshca/agent/peercred"
	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/proto/nodepb"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// jwtCache keeps signed JWT-SVIDs until half of their lifetime.
type jwtCache struct {
	mu     sync.Mutex
	tokens map[string]cachedJWT // entry ID + "\x00" + sorted audiences
}

type cachedJWT struct {
	token   string
	kid     string // the key that signed it (issue 13: re-signed once tainted)
	renewAt time.Time
}

// tokenKid returns the key ID in a compact JWS's header, or "".
func tokenKid(token string) string {
	head, _, ok := strings.Cut(token, ".")
	if !ok {
		return ""
	}
	b, err := base64.RawURLEncoding.DecodeString(head)
	if err != nil {
		return ""
	}
	var h struct {
		Kid string `json:"kid"`
	}
	if json.Unmarshal(b, &h) != nil {
		return ""
	}
	return h.Kid
}

// jwtKeyTainted reports whether the servers said an operator tainted a
// JWT key.
func (a *Agent) jwtKeyTainted(kid string) bool {
	a.store.mu.Lock()
	defer a.store.mu.Unlock()
	for _, k := range a.store.jwt {
		if k.Kid == kid {
			return k.Tainted
		}
	}
	return false
}

func jwtKey(entryID string, audience []string) string {
	a := append([]string(nil), audience...)
	sort.Strings(a)
	return entryID + "\x00" + strings.Join(a, "\x00")
}

// jwtBundle returns the trust domain's JWT authorities as a go-spiffe bundle.
func (a *Agent) jwtBundle() (*jwtbundle.Bundle, error) {
	a.store.mu.Lock()
	keys := a.store.jwt
	a.store.mu.Unlock()
	jb := jwtbundle.New(a.td)
	for _, k := range keys {
		pub, err := x509.ParsePKIXPublicKey(k.PublicKey)
		if err != nil {
			return nil, err
		}
		if err := jb.AddJWTAuthority(k.Kid, pub); err != nil {
			return nil, err
		}
	}
	return jb, nil
}

// currentClient is the node API client of the running session, if any.
func (a *Agent) currentClient() nodepb.NodeClient {
	a.clientMu.Lock()
	defer a.clientMu.Unlock()
	return a.client
}

func (a *Agent) setClient(c nodepb.NodeClient) {
	a.clientMu.Lock()
	a.client = c
	a.clientMu.Unlock()
}

// FetchJWTSVID returns JWT-SVIDs for the caller's entries (or the one it
// names), signed by the servers and cached until half their lifetime.
func (w *workloadAPI) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	if err := checkHeader(ctx); err != nil {
		return nil, err
	}
	if len(req.Audience) == 0 {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	sel, err := w.a.callerSelectors(ctx)
	if err != nil {
		return nil, err
	}
	entries := w.a.store.matchingEntries(sel)
	var chosen []*nodepb.Entry
	for _, e := range entries {
		if req.SpiffeId == "" || e.SpiffeId == req.SpiffeId {
			chosen = append(chosen, e)
		}
	}
	info, _ := peercred.FromContext(ctx)
	if len(chosen) == 0 {
		w.a.events.Record(audit.Event{Actor: callerActor(info), Action: "workload.fetch_jwt_svid", Decision: audit.Deny, Reason: "no entry matches"})
		return nil, status.Error(codes.PermissionDenied, "no identity issued")
	}
	resp := &workload.JWTSVIDResponse{}
	for _, e := range chosen {
		token, err := w.a.jwtSVID(ctx, e, req.Audience)
		if err != nil {
			return nil, err
		}
		resp.Svids = append(resp.Svids, &workload.JWTSVID{SpiffeId: e.SpiffeId, Svid: token})
		w.a.events.Record(audit.Event{Actor: callerActor(info), Action: "workload.fetch_jwt_svid", Subject: e.SpiffeId, Decision: audit.Allow,
			Details: map[string]string{"audience": strings.Join(req.Audience, " ")}})
	}
	return resp, nil
}

func (a *Agent) jwtSVID(ctx context.Context, e *nodepb.Entry, audience []string) (string, error) {
	key := jwtKey(e.Id, audience)
	now := a.cfg.Clock.Now()
	a.jwts.mu.Lock()
	c, cached := a.jwts.tokens[key]
	a.jwts.mu.Unlock()
	if cached && now.Before(c.renewAt) && !a.jwtKeyTainted(c.kid) {
		return c.token, nil
	}
	client := a.currentClient()
	if client == nil {
		return "", status.Error(codes.Unavailable, "the agent is not connected to a server yet; retry")
	}
	var resp *nodepb.SignJWTSVIDResponse
	err := callServer(ctx, a.cfg.Clock, func(ctx context.Context) error {
		var err error
		resp, err = client.SignJWTSVID(ctx, &nodepb.SignJWTSVIDRequest{EntryId: e.Id, Audience: audience})
		return err
	})
	if err != nil {
		return "", status.Errorf(codes.Unavailable, "sign JWT-SVID: %v", status.Convert(err).Message())
	}
	exp := time.Unix(resp.ExpiresUnix, 0)
	a.jwts.mu.Lock()
	a.jwts.tokens[key] = cachedJWT{token: resp.Token, kid: tokenKid(resp.Token), renewAt: now.Add(exp.Sub(now) / 2)}
	a.jwts.mu.Unlock()
	return resp.Token, nil
}

// FetchJWTBundles streams the JWT authorities as a JWKS.
func (w *workloadAPI) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream workload.SpiffeWorkloadAPI_FetchJWTBundlesServer) error {
	ctx := stream.Context()
	if err := checkHeader(ctx); err != nil {
		return err
	}
	var last []byte
	for {
		changed := w.a.store.changed()
		jb, err := w.a.jwtBundle()
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		if len(jb.JWTAuthorities()) > 0 {
			doc, err := jb.Marshal()
			if err != nil {
				return status.Error(codes.Internal, err.Error())
			}
			if !bytes.Equal(doc, last) {
				if err := stream.Send(&workload.JWTBundlesResponse{Bundles: map[string][]byte{w.a.td.IDString(): doc}}); err != nil {
					return err
				}
				last = doc
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// ValidateJWTSVID validates a JWT-SVID for an audience with the trust
// domain's JWT authorities.
func (w *workloadAPI) ValidateJWTSVID(ctx context.Context, req *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	if err := checkHeader(ctx); err != nil {
		return nil, err
	}
	if req.Audience == "" || req.Svid == "" {
		return nil, status.Error(codes.InvalidArgument, "audience and svid are required")
	}
	jb, err := w.a.jwtBundle()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	id, claimMap, err := validateJWTSVID(req.Svid, jb, req.Audience, w.a.cfg.Clock.Now())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	claims, err := structpb.NewStruct(claimMap)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &workload.ValidateJWTSVIDResponse{SpiffeId: id.String(), Claims: claims}, nil
}

// jwtAlgorithms are the JWS algorithms a JWT-SVID may use (JWT-SVID §3).
var jwtAlgorithms = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.ES256, jose.ES384, jose.ES512, jose.PS256, jose.PS384, jose.PS512}

// maxJWTSize bounds a JWT-SVID presented for validation.
const maxJWTSize = 16 << 10

// validateJWTSVID validates a JWT-SVID as go-spiffe's jwtsvid.ParseAndValidate
// does (signature by a key of the bundle, found by kid; sub a SPIFFE ID of
// the bundle's trust domain; exp present; the audience among aud), at the
// time now rather than the wall clock's.
func validateJWTSVID(token string, bundle *jwtbundle.Bundle, audience string, now time.Time) (spiffeid.ID, map[string]any, error) {
	if len(token) > maxJWTSize {
		return spiffeid.ID{}, nil, fmt.Errorf("jwtsvid: token of %d bytes, limit %d", len(token), maxJWTSize)
	}
	tok, err := jwt.ParseSigned(token, jwtAlgorithms)
	if err != nil {
		return spiffeid.ID{}, nil, errors.New("jwtsvid: unable to parse JWT token")
	}
	if len(tok.Headers) != 1 {
		return spiffeid.ID{}, nil, errors.New("jwtsvid: want exactly one signature")
	}
	h := tok.Headers[0]
	if typ, ok := h.ExtraHeaders[jose.HeaderType]; ok && typ != "JWT" && typ != "JOSE" {
		return spiffeid.ID{}, nil, errors.New("jwtsvid: token header type not equal to either JWT or JOSE")
	}
	var claims jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&claims); err != nil {
		return spiffeid.ID{}, nil, fmt.Errorf("jwtsvid: unable to get claims from token: %v", err)
	}
	switch {
	case claims.Subject == "":
		return spiffeid.ID{}, nil, errors.New("jwtsvid: token missing subject claim")
	case claims.Expiry == nil:
		return spiffeid.ID{}, nil, errors.New("jwtsvid: token missing exp claim")
	case h.KeyID == "":
		return spiffeid.ID{}, nil, errors.New("jwtsvid: token header missing key id")
	}
	id, err := spiffeid.FromString(claims.Subject)
	if err != nil {
		return spiffeid.ID{}, nil, fmt.Errorf("jwtsvid: token has an invalid subject claim: %v", err)
	}
	if id.TrustDomain() != bundle.TrustDomain() {
		return spiffeid.ID{}, nil, fmt.Errorf("jwtsvid: no bundle found for trust domain %q", id.TrustDomain())
	}
	key, ok := bundle.FindJWTAuthority(h.KeyID)
	if !ok {
		return spiffeid.ID{}, nil, fmt.Errorf("jwtsvid: no JWT authority %q found for trust domain %q", h.KeyID, id.TrustDomain())
	}
	all := map[string]any{}
	if err := tok.Claims(key, &all); err != nil {
		return spiffeid.ID{}, nil, fmt.Errorf("jwtsvid: unable to get claims from token: %v", err)
	}
	if err := claims.ValidateWithLeeway(jwt.Expected{AnyAudience: jwt.Audience{audience}, Time: now}, 0); err != nil {
		switch {
		case errors.Is(err, jwt.ErrExpired):
			return spiffeid.ID{}, nil, errors.New("jwtsvid: token has expired")
		case errors.Is(err, jwt.ErrInvalidAudience):
			return spiffeid.ID{}, nil, fmt.Errorf("jwtsvid: expected audience in [%q] (audience=%q)", audience, claims.Audience)
		}
		return spiffeid.ID{}, nil, fmt.Errorf("jwtsvid: %w", err)
	}
	return id, all, nil
}
