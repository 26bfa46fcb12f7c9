package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strconv"

	"github.com/meshca/meshca/proto/nodepb"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/raftfsm"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Sync resource kinds. New kinds (CRLs, policy bundles, bans) are added
// here and in nodepb.Resource; the stream's diffing does not change.
const (
	ResourceEntry          = "entry"
	ResourceBundle         = "bundle"
	ResourceJWTAuthorities = "jwt_authorities"
	ResourceCRL            = "crl"
	// ResourceOPABundle is a signed OPA bundle's latest revision (issue 12).
	ResourceOPABundle = "opa_bundle"
	// ResourceIdentityPolicy says which workload selectors the issuance
	// policy derives identities from (issue 12).
	ResourceIdentityPolicy = "identity_policy"
	// ResourceOPAKey is the trust domain's OPA bundle signing key, public
	// part: agents verify every bundle with it before they cache it (issue 12).
	ResourceOPAKey = "opa_key"
)

// maxKnownResources bounds the versions an agent may name in a SyncRequest.
const maxKnownResources = 100_000

func resourceKey(kind, name string) string { return kind + "/" + name }

// contentVersion is the version of a resource without a revision of its
// own: a digest of its deterministic encoding, the same on every server.
func contentVersion(m proto.Message) string {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:12])
}

// syncResources is the node's view: its entries, the trust domain's roots
// and the JWT authorities, by key.
func (s *Server) syncResources(r *raftfsm.Reader, agentID string) map[string]*nodepb.Resource {
	out := map[string]*nodepb.Resource{}
	for _, e := range r.EntriesByParent(agentID) {
		out[resourceKey(ResourceEntry, e.Id)] = &nodepb.Resource{Kind: ResourceEntry, Name: e.Id,
			Version: strconv.FormatUint(e.Revision, 10), Body: &nodepb.Resource_Entry{Entry: toNodeEntry(e)}}
	}
	b := bundleOf(r, s.td)
	jwt := &nodepb.JWTAuthorities{Keys: b.JwtAuthorities}
	b.JwtAuthorities = nil
	out[resourceKey(ResourceBundle, s.td.Name())] = &nodepb.Resource{Kind: ResourceBundle, Name: s.td.Name(),
		Version: contentVersion(b), Body: &nodepb.Resource_Bundle{Bundle: b}}
	out[resourceKey(ResourceJWTAuthorities, s.td.Name())] = &nodepb.Resource{Kind: ResourceJWTAuthorities, Name: s.td.Name(),
		Version: contentVersion(jwt), Body: &nodepb.Resource_JwtAuthorities{JwtAuthorities: jwt}}
	for _, c := range r.CRLs() {
		a := r.Authority(c.AuthorityId)
		if a == nil || a.State == raftpb.AuthorityState_REVOKED {
			continue
		}
		version, tainted := strconv.FormatUint(c.Number, 10), a.State == raftpb.AuthorityState_TAINTED
		if tainted {
			version += "-tainted"
		}
		out[resourceKey(ResourceCRL, c.AuthorityId)] = &nodepb.Resource{Kind: ResourceCRL, Name: c.AuthorityId,
			Version: version, Body: &nodepb.Resource_Crl{Crl: &nodepb.CRL{Profile: a.Profile,
				Root: a.Kind == raftpb.AuthorityKind_ROOT, Certificate: a.Certificate, Der: c.Der, Number: c.Number, Tainted: tainted}}}
	}
	if k := r.OPAKey(); k != nil { // issue 12: the key agents verify bundles with
		out[resourceKey(ResourceOPAKey, s.td.Name())] = &nodepb.Resource{Kind: ResourceOPAKey, Name: s.td.Name(), Version: k.Kid,
			Body: &nodepb.Resource_OpaKey{OpaKey: &nodepb.OPAKey{Kid: k.Kid, PublicKey: k.PublicKey}}}
	}
	for _, b := range r.OPABundleNames() { // issue 12: every agent gets every bundle
		out[resourceKey(ResourceOPABundle, b.Name)] = &nodepb.Resource{Kind: ResourceOPABundle, Name: b.Name,
			Version: strconv.FormatUint(b.Revision, 10), Body: &nodepb.Resource_OpaBundle{OpaBundle: &nodepb.OPABundle{
				Revision: b.Revision, Bundle: b.Bundle, Sha256: b.Sha256}}}
	}
	if res := s.identityPolicyResource(context.Background(), r); res != nil {
		out[resourceKey(res.Kind, res.Name)] = res
	}
	return out
}

// syncDiff is the update that takes an agent holding known to cur, and
// updates known to match.
func syncDiff(known map[string]string, cur map[string]*nodepb.Resource) *nodepb.SyncUpdate {
	u := &nodepb.SyncUpdate{}
	for k, res := range cur {
		if known[k] != res.Version {
			u.Resources = append(u.Resources, res)
			known[k] = res.Version
		}
	}
	for k := range known {
		if _, ok := cur[k]; !ok {
			u.Removed = append(u.Removed, k)
			delete(known, k)
		}
	}
	return u
}

// Sync pushes the agent's view as versioned resources: at once what
// differs from the versions the agent already holds, then every change,
// and only changes. The stream waits on the state machine's scopes of its
// node, the bundle and the JWT authorities: a change elsewhere (another
// node's entry or attestation, the ledger) does not wake it.
func (n *nodeService) Sync(req *nodepb.SyncRequest, stream nodepb.Node_SyncServer) error {
	ctx := stream.Context()
	agentID, err := n.s.requireAgent(ctx)
	if err != nil {
		return err
	}
	if len(req.Known) > maxKnownResources {
		return status.Errorf(codes.InvalidArgument, "%d known resources; at most %d", len(req.Known), maxKnownResources)
	}
	// The first diff must not tell the agent that what another server
	// wrote a moment ago is gone: read at a linearizable point.
	if err := n.s.node.ReadIndex(ctx); err != nil {
		return err
	}
	known := make(map[string]string, len(req.Known))
	for k, v := range req.Known {
		known[k] = v
	}
	scopes := [...]string{raftfsm.ScopeNode(agentID), raftfsm.ScopeBundle, raftfsm.ScopeJWT, raftfsm.ScopeCRL, raftfsm.ScopeOPABundles,
		raftfsm.ScopeIssuancePolicy, raftfsm.ScopeOPAKey}
	for first := true; ; first = false {
		// Watch before reading: a change after the read closes a channel
		// already held.
		var wake [len(scopes)]<-chan struct{}
		for i, sc := range scopes {
			wake[i] = n.s.fsm.Watch(sc)
		}
		r := n.s.fsm.Read()
		if node := r.Node(agentID); node == nil || node.Banned {
			return status.Errorf(codes.PermissionDenied, "node %s was banned or evicted", agentID)
		}
		u := syncDiff(known, n.s.syncResources(r, agentID))
		if first || len(u.Resources) > 0 || len(u.Removed) > 0 {
			u.Revision = r.AppliedIndex()
			if err := stream.Send(u); err != nil {
				return err
			}
			n.s.syncSends.Add(1)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake[0]:
		case <-wake[1]:
		case <-wake[2]:
		case <-wake[3]:
		case <-wake[4]:
		case <-wake[5]:
		case <-wake[6]:
		}
		n.s.syncWakes.Add(1)
	}
}
