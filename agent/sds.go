package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"sort"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/meshca/meshca/agent/peercred"
	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/nodepb"
	"github.com/meshca/meshca/sds"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Envoy SDS on the agent's socket (package sds does the protocol).
//
// Each stream's caller is attested like a Workload API caller (SO_PEERCRED
// and the workload attestors) and gets only what its entries earn:
//
//   - "default" (Config.SDSNames.DefaultSVID): its default X509-SVID and
//     key, the first of its ECDSA SVIDs in the default order; "default~sm2"
//     the first SM2 one;
//   - a SPIFFE ID: the SVID of that identity, if it has it ("<id>~sm2" for
//     the SM2 one);
//   - "ROOTCA" and "spiffe://<trust domain>": a validation context with the
//     trust domain's roots of the profile and the CRL of every CA a chain
//     of that profile can hold; "ALL": the same roots for Envoy's SPIFFE
//     certificate validator (without CRLs, which that validator ignores);
//     each with "~sm2" for the SM2 hierarchy.
//
// A name the caller may not have gets no resource, and the refusal is
// audited (see package sds). A bundle is served only to a caller with at
// least one identity.

// SDS change topics the agent notifies (see sds.Server.Notify).
const (
	sdsTopicEntries = "entries"
	sdsTopicBundle  = "bundle"
)

func sdsTopicSVID(entryID string) string { return "svid/" + entryID }

// sdsAgent is the agent's side of SDS: it attests callers, builds their
// secrets from the store, and caches the resources so that every caller
// that has one shares it.
type sdsAgent struct {
	a      *Agent
	naming sds.Naming

	mu      sync.Mutex               // guards the caches
	svidRes map[*svid]*sds.Resource  // by SVID (a rotation makes a new one)
	bundles map[string]*sds.Resource // validation contexts, by profile and kind
	bundleV map[string]string        // the version each was built at
	opa     opaResources             // OPA bundles' generic secrets (issue 12)
}

func newSDSAgent(a *Agent) *sdsAgent {
	return &sdsAgent{a: a, naming: a.cfg.SDSNames, svidRes: map[*svid]*sds.Resource{}, bundles: map[string]*sds.Resource{}, bundleV: map[string]string{}}
}

// secrets attests the caller of a stream and returns its Source.
func (g *sdsAgent) secrets(ctx context.Context, node *corev3.Node) (sds.Source, error) {
	opts, err := sds.ParseNodeOptions(node)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	sel, err := g.a.callerSelectors(ctx)
	if err != nil {
		return nil, err
	}
	return &sdsCaller{g: g, sel: sel, noSPIFFEValidator: opts.DisableSPIFFECertValidation || g.a.cfg.SDSDisableSPIFFEValidator}, nil
}

// audit records SDS grants and refusals in the agent's audit trail.
func (g *sdsAgent) audit(ctx context.Context, e sds.AuditEvent) {
	d := audit.Allow
	if e.Decision == sds.DecisionRefuse {
		d = audit.Deny
	}
	actor := ""
	if info, ok := peercred.FromContext(ctx); ok {
		actor = callerActor(info)
	}
	details := map[string]string{"method": e.Method}
	if e.NodeID != "" {
		details["envoy_node"] = e.NodeID
	}
	if e.Version != "" {
		details["version"] = e.Version
	}
	g.a.events.Record(audit.Event{Actor: actor, Action: "sds.secret", Subject: e.Name, Decision: d, Reason: e.Reason, Details: details})
}

// svidResource returns the tls_certificate resource of an SVID, built once.
func (g *sdsAgent) svidResource(v *svid) (*sds.Resource, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if r, ok := g.svidRes[v]; ok {
		return r, nil
	}
	sec, err := sds.TLSCertificateSecret(v.entry.SpiffeId, v.chain, v.keyDER)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(v.chain[0])
	r, err := sds.NewResource(sec, hex.EncodeToString(sum[:12]))
	if err != nil {
		return nil, err
	}
	if len(g.svidRes) > 4096 { // rotated SVIDs: drop the cache, it refills
		clear(g.svidRes)
	}
	g.svidRes[v] = r
	return r, nil
}

// bundleResource returns the validation context of a profile's roots:
// with the CRLs of every CA when all, else (for Envoy's SPIFFE validator)
// the roots only.
func (g *sdsAgent) bundleResource(profile string, spiffeValidator, disableValidator bool) (*sds.Resource, error) {
	st := g.a.store
	st.mu.Lock()
	var roots [][]byte
	for _, r := range st.bundle.GetRoots() {
		if r.Profile == profile {
			roots = append(roots, r.Certificate)
		}
	}
	var crls []*nodepb.CRL
	for _, c := range st.crls {
		if c.Profile == profile {
			crls = append(crls, c)
		}
	}
	st.mu.Unlock()
	sort.Slice(crls, func(i, j int) bool { return string(crls[i].Der) < string(crls[j].Der) })
	h := sha256.New()
	for _, r := range roots {
		h.Write(r)
	}
	if !spiffeValidator {
		for _, c := range crls {
			h.Write(c.Der)
		}
	}
	key := profile
	if spiffeValidator {
		key += "/spiffe"
		if disableValidator {
			key += "/plain"
		}
	}
	version := hex.EncodeToString(h.Sum(nil)[:12])
	g.mu.Lock()
	defer g.mu.Unlock()
	if r, ok := g.bundles[key]; ok && g.bundleV[key] == version {
		return r, nil
	}
	var sec *tlsv3.Secret
	var err error
	if spiffeValidator {
		sec, err = sds.SPIFFEValidationContextSecret(key, []sds.TrustDomainBundle{{TrustDomain: g.a.td, Roots: roots}}, nil, disableValidator)
	} else {
		sec, err = sds.ValidationContextSecret(key, validationParams(roots, crls))
	}
	if err != nil {
		return nil, err
	}
	r, err := sds.NewResource(sec, version)
	if err != nil {
		return nil, err
	}
	g.bundles[key], g.bundleV[key] = r, version
	return r, nil
}

// validationParams gives the roots and, when every root has a CRL, the
// CRLs of every CA with the intermediates they belong to. While a root's
// CRL is missing (a cluster just formed), no CRL is served: a context with
// some CRLs but not all would make Envoy reject every chain.
func validationParams(roots [][]byte, crls []*nodepb.CRL) sds.ValidationContextParams {
	p := sds.ValidationContextParams{Roots: roots}
	haveRoot := map[string]bool{}
	for _, c := range crls {
		if c.Root {
			haveRoot[string(c.Certificate)] = true
		}
	}
	for _, r := range roots {
		if !haveRoot[string(r)] {
			return p
		}
	}
	for _, c := range crls {
		if !c.Root {
			p.Intermediates = append(p.Intermediates, c.Certificate)
		}
		p.CRLs = append(p.CRLs, c.Der)
	}
	return p
}

// sdsCaller is one attested caller's view.
type sdsCaller struct {
	g                 *sdsAgent
	sel               map[string]bool
	noSPIFFEValidator bool
}

// entries returns the caller's entries in the default order.
func (c *sdsCaller) entries() []*nodepb.Entry { return c.g.a.store.matchingEntries(c.sel) }

// Resolve implements sds.Source.
func (c *sdsCaller) Resolve(_ context.Context, name string) (sds.Result, error) {
	if b, ok := strings.CutPrefix(name, OPABundleSecretPrefix); ok {
		return c.resolveOPABundle(name, b) // issue 12
	}
	n, err := c.g.naming.Parse(name)
	if err != nil {
		return sds.Refuse(err.Error()), nil
	}
	entries := c.entries()
	if len(entries) == 0 {
		return sds.Refuse("no identity issued to this workload", sdsTopicEntries), nil
	}
	if !n.Explicit {
		n.Profile = plainProfile(entries, n)
	}
	switch n.Kind {
	case sds.KindDefaultSVID, sds.KindSVID:
		var e *nodepb.Entry
		for _, x := range entries {
			if x.Profile == n.Profile && (n.Kind == sds.KindDefaultSVID || x.SpiffeId == n.ID.String()) {
				e = x
				break
			}
		}
		if e == nil {
			return sds.Refuse("no such identity of this workload", sdsTopicEntries), nil
		}
		topics := []string{sdsTopicEntries, sdsTopicSVID(e.Id)}
		v := c.g.a.store.svidOf(e.Id, c.g.a.cfg.Clock.Now())
		if v == nil {
			return sds.Wait(topics...), nil
		}
		r, err := c.g.svidResource(v)
		if err != nil {
			return sds.Result{}, status.Errorf(codes.Internal, "build %s: %v", name, err)
		}
		return sds.Grant(r, topics...), nil
	case sds.KindDefaultBundle, sds.KindBundle, sds.KindAllBundles:
		if n.Kind == sds.KindBundle && n.TrustDomain != c.g.a.td {
			return sds.Refuse("no bundle of trust domain "+n.TrustDomain.Name(), sdsTopicEntries), nil
		}
		if c.g.a.store.rootsOf(n.Profile) == 0 {
			return sds.Wait(sdsTopicBundle, sdsTopicEntries), nil
		}
		r, err := c.g.bundleResource(n.Profile, n.Kind == sds.KindAllBundles, c.noSPIFFEValidator)
		if err != nil {
			return sds.Result{}, status.Errorf(codes.Internal, "build %s: %v", name, err)
		}
		return sds.Grant(r, sdsTopicBundle, sdsTopicEntries), nil
	}
	return sds.Refuse("unknown resource name"), nil
}

// plainProfile is the profile a name without a suffix means for these
// entries: ECDSA when one of them (of that SPIFFE ID, for an SVID name) is
// ECDSA, else SM2 when one is SM2 (see sds.ProfileSeparator).
func plainProfile(entries []*nodepb.Entry, n sds.Name) string {
	has := map[string]bool{}
	for _, e := range entries {
		if n.Kind != sds.KindSVID || e.SpiffeId == n.ID.String() {
			has[e.Profile] = true
		}
	}
	if !has[sds.ProfileECDSA] && has[sds.ProfileSM2] {
		return sds.ProfileSM2
	}
	return sds.ProfileECDSA
}

// Names implements sds.Source: every name the caller may have.
func (c *sdsCaller) Names(context.Context) ([]string, []string, error) {
	entries := c.entries()
	if len(entries) == 0 {
		return nil, []string{sdsTopicEntries}, nil
	}
	profiles := map[string]bool{}
	var names []string
	for _, e := range entries {
		id, err := spiffeid.FromString(e.SpiffeId)
		if err != nil {
			continue
		}
		names = append(names, c.g.naming.String(sds.Name{Kind: sds.KindSVID, Profile: e.Profile, ID: id}))
		profiles[e.Profile] = true
	}
	for _, p := range ca.Profiles() {
		if !profiles[p.Name()] {
			continue
		}
		for _, k := range []sds.NameKind{sds.KindDefaultSVID, sds.KindDefaultBundle, sds.KindAllBundles} {
			names = append(names, c.g.naming.String(sds.Name{Kind: k, Profile: p.Name()}))
		}
		names = append(names, c.g.naming.String(sds.Name{Kind: sds.KindBundle, Profile: p.Name(), TrustDomain: c.g.a.td}))
	}
	topics := []string{sdsTopicEntries}
	for _, b := range c.g.a.store.opaBundleNames() { // issue 12
		names = append(names, OPABundleSecretPrefix+b)
		topics = append(topics, sdsTopicOPABundle(b))
	}
	sort.Strings(names)
	return dedupe(names), topics, nil
}

func dedupe(s []string) []string {
	out := s[:0]
	for i, x := range s {
		if i == 0 || x != s[i-1] {
			out = append(out, x)
		}
	}
	return out
}

// svidOf returns the SVID of an entry valid at now, or nil.
func (s *store) svidOf(entryID string, now time.Time) *svid {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v, ok := s.svids[entryID]; ok && now.Before(v.notAfter) {
		return v
	}
	return nil
}

// rootsOf counts the roots of a profile the store holds.
func (s *store) rootsOf(profile string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.bundle.GetRoots() {
		if r.Profile == profile {
			n++
		}
	}
	return n
}

// SDSStats returns the counters of the agent's SDS server (streams,
// requests, ACKs, NACKs, grants, refusals).
func (a *Agent) SDSStats() sds.Stats { return a.sds.Stats() }
