package server

import (
	"context"
	"crypto/rand"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/policy"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/proto/raftpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// issue 12 tokens: bearer tokens of the OPA bundle service. An operator
// creates one (meshca policy token create), scoped to bundle names and
// with a lifetime on the server's clock; the secret is returned once and
// only its SHA-256 is stored through Raft. The bundle service admits a
// request with "Authorization: Bearer <token>" (a stock OPA's
// credentials.bearer) as it admits one with an X509-SVID of the trust
// domain; every admission and refusal is audited, naming the token by its
// public ID and name, never by its secret.

// Bounds of a bundle token request.
const (
	maxTokenBundles = 64
	maxTokenTTL     = 10 * 365 * 24 * time.Hour
)

func (s *Server) bundleTokenInfo(t *raftpb.BundleToken) *operatorpb.BundleTokenInfo {
	info := &operatorpb.BundleTokenInfo{Id: t.Id, Name: t.Name, Bundles: t.Bundles, CreatedUnix: t.CreatedUnixNano / 1e9, Author: t.Author}
	if t.ExpiresUnixNano != 0 {
		info.ExpiresUnix = t.ExpiresUnixNano / 1e9
		info.Expired = !s.cfg.Clock.Now().Before(time.Unix(0, t.ExpiresUnixNano))
	}
	return info
}

// CreateBundleToken creates a bundle token and returns its secret once.
func (o *operatorService) CreateBundleToken(ctx context.Context, req *operatorpb.CreateBundleTokenRequest) (*operatorpb.CreateBundleTokenResponse, error) {
	refuse := func(err error) (*operatorpb.CreateBundleTokenResponse, error) {
		o.s.auditOp(ctx, "policy.token.create", req.Name, audit.Deny, status.Convert(err).Message(), nil)
		return nil, err
	}
	if err := policy.CheckName(req.Name); err != nil {
		return refuse(status.Error(codes.InvalidArgument, strings.Replace(err.Error(), "bundle name", "token name", 1)))
	}
	if req.TtlSeconds < 0 || time.Duration(req.TtlSeconds) > maxTokenTTL/time.Second {
		return refuse(status.Errorf(codes.InvalidArgument, "a TTL of %d s: give 0 (no expiry) up to %d s", req.TtlSeconds, int64(maxTokenTTL/time.Second)))
	}
	if len(req.Bundles) > maxTokenBundles {
		return refuse(status.Errorf(codes.InvalidArgument, "%d bundles; a token names at most %d", len(req.Bundles), maxTokenBundles))
	}
	bundles := slices.Clone(req.Bundles)
	slices.Sort(bundles)
	bundles = slices.Compact(bundles)
	for _, b := range bundles {
		if err := policy.CheckName(b); err != nil {
			return refuse(status.Error(codes.InvalidArgument, err.Error()))
		}
	}
	id, token, sum, err := policy.NewBundleToken(rand.Reader)
	if err != nil {
		return refuse(status.Error(codes.Internal, err.Error()))
	}
	now := o.s.cfg.Clock.Now()
	t := &raftpb.BundleToken{Id: id, Name: req.Name, SecretSha256: sum, Bundles: bundles, CreatedUnixNano: now.UnixNano(), Author: adminActor(ctx)}
	if req.TtlSeconds > 0 {
		t.ExpiresUnixNano = now.Add(time.Duration(req.TtlSeconds) * time.Second).UnixNano()
	}
	if _, err := o.s.node.Apply(ctx, &raftpb.Command{Op: &raftpb.Command_PutBundleToken{PutBundleToken: &raftpb.PutBundleToken{Token: t}}}); err != nil {
		return refuse(fsmStatus(err))
	}
	d := map[string]string{"id": id, "bundles": strings.Join(bundles, ",")}
	if t.ExpiresUnixNano != 0 {
		d["expires"] = time.Unix(0, t.ExpiresUnixNano).UTC().Format(time.RFC3339)
	}
	o.s.auditOp(ctx, "policy.token.create", req.Name, audit.Allow, "", d)
	return &operatorpb.CreateBundleTokenResponse{Info: o.s.bundleTokenInfo(t), Token: token}, nil
}

// ListBundleTokens lists the bundle tokens, without secrets.
func (o *operatorService) ListBundleTokens(ctx context.Context, _ *operatorpb.ListBundleTokensRequest) (*operatorpb.ListBundleTokensResponse, error) {
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	resp := &operatorpb.ListBundleTokensResponse{}
	for _, t := range o.s.fsm.Read().BundleTokens() {
		resp.Tokens = append(resp.Tokens, o.s.bundleTokenInfo(t))
	}
	slices.SortFunc(resp.Tokens, func(a, b *operatorpb.BundleTokenInfo) int { return strings.Compare(a.Name, b.Name) })
	return resp, nil
}

// RevokeBundleToken revokes a bundle token by ID or name.
func (o *operatorService) RevokeBundleToken(ctx context.Context, req *operatorpb.RevokeBundleTokenRequest) (*operatorpb.BundleTokenInfo, error) {
	subject := req.Id + req.Name
	refuse := func(err error) (*operatorpb.BundleTokenInfo, error) {
		o.s.auditOp(ctx, "policy.token.revoke", subject, audit.Deny, status.Convert(err).Message(), nil)
		return nil, err
	}
	if (req.Id == "") == (req.Name == "") {
		return refuse(status.Error(codes.InvalidArgument, "name the token by its ID or by its name (one of them)"))
	}
	if err := o.s.node.ReadIndex(ctx); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	r := o.s.fsm.Read()
	t := r.BundleToken(req.Id)
	if req.Name != "" {
		t = r.BundleTokenByName(req.Name)
	}
	if t == nil {
		return refuse(status.Errorf(codes.NotFound, "no bundle token %s (see meshca policy token list)", subject))
	}
	subject = t.Name
	if _, err := o.s.node.Apply(ctx, &raftpb.Command{Op: &raftpb.Command_DeleteBundleToken{DeleteBundleToken: &raftpb.DeleteBundleToken{Id: t.Id}}}); err != nil {
		return refuse(fsmStatus(err))
	}
	o.s.auditOp(ctx, "policy.token.revoke", t.Name, audit.Allow, "", map[string]string{"id": t.Id})
	return o.s.bundleTokenInfo(t), nil
}

// authorizeBundleFetch admits a bundle service request: a bundle token
// (Authorization: Bearer) that is known, unexpired on the server's clock,
// whose secret matches (compared in constant time) and that names the
// bundle (403 otherwise); or else an X509-SVID of the trust domain.
func (s *Server) authorizeBundleFetch(r *http.Request, name string) (string, error) {
	if h := r.Header.Get("Authorization"); h != "" {
		tok, ok := policy.BearerToken(h)
		if !ok {
			return "", policy.Unauthenticated("the Authorization header is not a Bearer token")
		}
		id, sum, err := policy.ParseBundleToken(tok)
		if err != nil {
			return "", policy.Unauthenticated("%v", err)
		}
		who := "bundle-token:" + id
		t := s.fsm.Read().BundleToken(id)
		if t == nil {
			return who, policy.Unauthenticated("bundle token %s is unknown or revoked", id)
		}
		who = "bundle-token:" + t.Name + "/" + id
		if !policy.TokenHashEqual(sum, t.SecretSha256) {
			return who, policy.Unauthenticated("bundle token %s: wrong secret", id)
		}
		if t.ExpiresUnixNano != 0 {
			if exp := time.Unix(0, t.ExpiresUnixNano); !s.cfg.Clock.Now().Before(exp) {
				return who, policy.Unauthenticated("bundle token %s expired at %s", id, exp.UTC().Format(time.RFC3339))
			}
		}
		if len(t.Bundles) > 0 && !slices.Contains(t.Bundles, name) {
			return who, policy.Forbidden("bundle token %s may download %s, not %q", id, strings.Join(t.Bundles, ", "), name)
		}
		return who, nil
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return "", policy.Unauthenticated("an X509-SVID of the trust domain or a bundle token (Authorization: Bearer) is required")
	}
	raw := make([][]byte, len(r.TLS.PeerCertificates))
	for i, c := range r.TLS.PeerCertificates {
		raw[i] = c.Raw
	}
	id, err := s.tlsID.VerifyPeer(raw)
	if err != nil {
		return "", policy.Unauthenticated("client certificate: %v", err)
	}
	return id.String(), nil
}

// auditBundleFetch records a bundle service request's outcome.
func (s *Server) auditBundleFetch(r *http.Request, f policy.Fetch) {
	d := map[string]string{"remote": r.RemoteAddr, "status": strconv.Itoa(f.Status)}
	if f.Err != nil {
		s.events.Record(audit.Event{Actor: f.Who, Action: "policy.bundle.fetch", Subject: f.Name, Decision: audit.Deny, Reason: f.Err.Error(), Details: d})
		return
	}
	d["revision"] = strconv.FormatUint(f.Revision, 10)
	s.events.Record(audit.Event{Actor: f.Who, Action: "policy.bundle.fetch", Subject: f.Name, Decision: audit.Allow, Details: d})
}
