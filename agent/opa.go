package agent

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/policy"
	"github.com/meshca/meshca/proto/nodepb"
	"github.com/meshca/meshca/sds"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
)

// issue 12: OPA bundles on the agent. The Sync stream brings every
// bundle's latest revision; the agent serves its cached copies
//
//   - over SDS, as generic_secret resources named opa-bundle:<NAME>,
//     pushed on every new revision;
//   - over OPA's bundle service API on a local port (BundleAddr), so that
//     OPA sidecars keep working while the servers are away;
//   - evaluated, as Envoy's ext_authz gRPC service on the agent socket
//     (ExtAuthzBundle), with OPA-Envoy's input and result shapes.

// OPABundleSecretPrefix prefixes the SDS names of OPA bundles.
const OPABundleSecretPrefix = "opa-bundle:"

func sdsTopicOPABundle(name string) string { return OPABundleSecretPrefix + name }

// opaBundle returns the cached latest revision of a bundle, or nil.
func (s *store) opaBundle(name string) *nodepb.OPABundle {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opaBundles[name]
}

func (s *store) opaBundleNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.opaBundles))
	for n := range s.opaBundles {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// opaResources caches the generic_secret of each bundle revision.
type opaResources struct {
	mu  sync.Mutex
	res map[string]*sds.Resource // by name
	rev map[string]uint64
}

// resolveOPABundle answers an SDS request for opa-bundle:<name>: a caller
// with an identity gets it; a bundle not pushed yet is waited for.
func (c *sdsCaller) resolveOPABundle(full, name string) (sds.Result, error) {
	if len(c.entries()) == 0 {
		return sds.Refuse("no identity issued to this workload", sdsTopicEntries), nil
	}
	if policy.CheckName(name) != nil {
		return sds.Refuse("not a bundle name: " + name), nil
	}
	topic := sdsTopicOPABundle(name)
	b := c.g.a.store.opaBundle(name)
	if b == nil {
		return sds.Wait(topic, sdsTopicEntries), nil
	}
	o := &c.g.opa
	o.mu.Lock()
	defer o.mu.Unlock()
	if r, ok := o.res[name]; ok && o.rev[name] == b.Revision {
		return sds.Grant(r, topic, sdsTopicEntries), nil
	}
	sec := &tlsv3.Secret{Name: full, Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{
		Secret: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b.Bundle}}}}}
	r, err := sds.NewResource(sec, strconv.FormatUint(b.Revision, 10))
	if err != nil {
		return sds.Result{}, fmt.Errorf("build %s: %w", full, err)
	}
	if o.res == nil {
		o.res, o.rev = map[string]*sds.Resource{}, map[string]uint64{}
	}
	o.res[name], o.rev[name] = r, b.Revision
	return sds.Grant(r, topic, sdsTopicEntries), nil
}

// agentBundles serves the cached bundles to OPA's bundle service API.
type agentBundles struct{ s *store }

func (b agentBundles) Bundle(name string) (*policy.Served, <-chan struct{}) {
	changed := b.s.changed()
	cur := b.s.opaBundle(name)
	if cur == nil {
		return nil, changed
	}
	return &policy.Served{Revision: cur.Revision, Bytes: cur.Bundle, SHA256: cur.Sha256}, changed
}

// newBundleServer listens on BundleAddr (a loopback address: the cached
// bundles are for the node's OPA sidecars).
func (a *Agent) newBundleServer() (net.Listener, *http.Server, error) {
	ln, err := net.Listen("tcp", a.cfg.BundleAddr)
	if err != nil {
		return nil, nil, fmt.Errorf("agent bundle service: %w", err)
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); !ok || !tcp.IP.IsLoopback() {
		ln.Close()
		return nil, nil, fmt.Errorf("agent bundle service: %s is not a loopback address", a.cfg.BundleAddr)
	}
	svc := &policy.BundleService{Source: agentBundles{s: a.store}, Clock: a.cfg.Clock,
		Audit: func(r *http.Request, f policy.Fetch) {
			d, reason := audit.Allow, ""
			if f.Err != nil {
				d, reason = audit.Deny, f.Err.Error()
			}
			a.events.Record(audit.Event{Actor: r.RemoteAddr, Action: "policy.bundle.fetch", Subject: f.Name, Decision: d, Reason: reason,
				Details: map[string]string{"revision": strconv.FormatUint(f.Revision, 10), "status": strconv.Itoa(f.Status)}})
		}}
	mux := http.NewServeMux()
	mux.Handle("/bundles/", svc)
	mux.Handle("/v1/bundles/", svc)
	return ln, &http.Server{Handler: http.MaxBytesHandler(mux, 64<<10), ReadHeaderTimeout: 10 * time.Second}, nil
}

// BundleAddr is the address of the agent's bundle service, if configured.
func (a *Agent) BundleAddr() string {
	if a.bundleLn == nil {
		return ""
	}
	return a.bundleLn.Addr().String()
}

// extAuthz is Envoy's ext_authz gRPC service, evaluating one bundle.
type extAuthz struct {
	authv3.UnimplementedAuthorizationServer
	a        *Agent
	bundle   string
	decision string
	mu       sync.Mutex // serialises compiles
	cur      atomic.Pointer[compiledAuthz]
}

type compiledAuthz struct {
	rev uint64
	z   *policy.Authz
	err error
}

// authz returns the bundle's latest revision, compiled once.
func (x *extAuthz) authz(ctx context.Context) (*compiledAuthz, error) {
	b := x.a.store.opaBundle(x.bundle)
	if b == nil {
		return nil, fmt.Errorf("bundle %q has not reached this agent", x.bundle)
	}
	if c := x.cur.Load(); c != nil && c.rev == b.Revision {
		return c, nil
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if c := x.cur.Load(); c != nil && c.rev == b.Revision {
		return c, nil
	}
	z, err := policy.CompileAuthz(ctx, b.Revision, b.Bundle, x.decision)
	c := &compiledAuthz{rev: b.Revision, z: z, err: err}
	x.cur.Store(c)
	return c, nil
}

var checkJSON = protojson.MarshalOptions{}

// Check implements envoy.service.auth.v3.Authorization: OPA-Envoy's input,
// the decision of the bundle's latest revision, OPA-Envoy's result shapes.
// An error (no bundle yet, one that does not compile, an evaluation
// error) denies: ext_authz fails closed. Every decision is audited.
func (x *extAuthz) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	attrs := req.GetAttributes()
	principal := attrs.GetSource().GetPrincipal()
	http := attrs.GetRequest().GetHttp()
	subject := http.GetMethod() + " " + http.GetHost() + http.GetPath()
	res, rev, err := x.decide(ctx, req)
	details := map[string]string{"bundle": x.bundle, "revision": strconv.FormatUint(rev, 10)}
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		x.a.events.Record(audit.Event{Actor: principal, Action: "ext_authz.check", Subject: subject, Decision: audit.Deny, Reason: err.Error(), Details: details})
		return denied(AuthzDeny{Status: 403, Body: "authorization policy error"}), nil
	}
	if !res.Allowed {
		x.a.events.Record(audit.Event{Actor: principal, Action: "ext_authz.check", Subject: subject, Decision: audit.Deny, Reason: "denied by the policy", Details: details})
		st := res.HTTPStatus
		if st == 0 {
			st = 403
		}
		return denied(AuthzDeny{Status: st, Body: res.Body, Headers: res.Headers}), nil
	}
	x.a.events.Record(audit.Event{Actor: principal, Action: "ext_authz.check", Subject: subject, Decision: audit.Allow, Details: details})
	ok := &authv3.OkHttpResponse{Headers: headerOptions(res.Headers), ResponseHeadersToAdd: headerOptions(res.ResponseHeadersToAdd),
		HeadersToRemove: res.RequestHeadersToRemove}
	return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.OK)}, HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: ok}}, nil
}

func (x *extAuthz) decide(ctx context.Context, req *authv3.CheckRequest) (policy.AuthzResult, uint64, error) {
	c, err := x.authz(ctx)
	if err != nil {
		return policy.AuthzResult{}, 0, err
	}
	if c.err != nil {
		return policy.AuthzResult{}, c.rev, c.err
	}
	b, err := checkJSON.Marshal(req)
	if err != nil {
		return policy.AuthzResult{}, c.rev, err
	}
	in, err := policy.EnvoyInput(b)
	if err != nil {
		return policy.AuthzResult{}, c.rev, err
	}
	res, err := c.z.Decide(ctx, in)
	return res, c.rev, err
}

// AuthzDeny is a denied ext_authz response.
type AuthzDeny struct {
	Status  int
	Body    string
	Headers map[string]string
}

func denied(d AuthzDeny) *authv3.CheckResponse {
	return &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.PermissionDenied)},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode(d.Status)}, Headers: headerOptions(d.Headers), Body: d.Body}}}
}

func headerOptions(h map[string]string) []*corev3.HeaderValueOption {
	if len(h) == 0 {
		return nil
	}
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]*corev3.HeaderValueOption, len(keys))
	for i, k := range keys {
		out[i] = &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: h[k]}}
	}
	return out
}
