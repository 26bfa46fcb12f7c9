package agent

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"strconv"

	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/policy"
	"github.com/meshca/meshca/proto/nodepb"
)

// issue 12: the agent verifies every OPA bundle the Sync stream brings,
// as OPA would (.signatures.json: an ES256 JWT by the trust domain's OPA
// key, listing every file's hash), and that its manifest's revision is
// the one announced, before the bundle enters the cache that the local
// bundle service, SDS opa-bundle:<NAME> and ext_authz serve from. A bundle
// that fails is refused (logged, audited as policy.bundle.verify deny);
// the revision cached before it is still served. The key comes over the
// same stream (resource opa_key), from the servers.

// opaKeyHeld returns the OPA bundle verification key held, or nil.
func (s *store) opaKeyHeld() *nodepb.OPAKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opaKey
}

// applySync applies a Sync update to the store, less the OPA bundles that
// do not verify; it returns what store.apply does.
func (a *Agent) applySync(u *nodepb.SyncUpdate) *nodepb.Bundle {
	a.verifyOPABundles(u)
	return a.store.apply(u)
}

// verifyOPABundles drops from u the OPA bundles that do not verify with
// the key u brings, else the key held, and audits each verdict.
func (a *Agent) verifyOPABundles(u *nodepb.SyncUpdate) {
	key := a.store.opaKeyHeld()
	for _, r := range u.Resources {
		if k, ok := r.Body.(*nodepb.Resource_OpaKey); ok {
			key = k.OpaKey
		}
	}
	kept := u.Resources[:0]
	for _, r := range u.Resources {
		body, ok := r.Body.(*nodepb.Resource_OpaBundle)
		if !ok {
			kept = append(kept, r)
			continue
		}
		b := body.OpaBundle
		details := map[string]string{"revision": strconv.FormatUint(b.GetRevision(), 10)}
		if key != nil {
			details["kid"] = key.Kid
		}
		if err := verifyOPABundle(key, b); err != nil {
			served := uint64(0)
			if prev := a.store.opaBundle(r.Name); prev != nil {
				served = prev.Revision
			}
			details["served_revision"] = strconv.FormatUint(served, 10)
			a.log.Error("refused an OPA bundle that does not verify; the revision cached before it is still served",
				"bundle", r.Name, "revision", b.GetRevision(), "served_revision", served, "err", err)
			a.events.Record(audit.Event{Actor: "sync", Action: "policy.bundle.verify", Subject: r.Name, Decision: audit.Deny,
				Reason: err.Error(), Details: details})
			continue
		}
		a.events.Record(audit.Event{Actor: "sync", Action: "policy.bundle.verify", Subject: r.Name, Decision: audit.Allow, Details: details})
		kept = append(kept, r)
	}
	u.Resources = kept
}

// verifyOPABundle checks a bundle's digest, its signature with key and
// that its manifest names the revision the stream announced.
func verifyOPABundle(key *nodepb.OPAKey, b *nodepb.OPABundle) error {
	if key == nil || key.Kid == "" || len(key.PublicKey) == 0 {
		return errors.New("no OPA signing key of the trust domain has reached this agent")
	}
	if b == nil || len(b.Bundle) == 0 {
		return errors.New("an empty bundle")
	}
	if sum := sha256.Sum256(b.Bundle); !bytes.Equal(sum[:], b.Sha256) {
		return errors.New("its SHA-256 is not the one announced with it")
	}
	pb, err := policy.Verify(bytes.NewReader(b.Bundle), policy.PublicKeyPEM(key.PublicKey), key.Kid)
	if err != nil {
		return fmt.Errorf("signature (key %s): %w", key.Kid, err)
	}
	if want := strconv.FormatUint(b.Revision, 10); pb.Manifest.Revision != want {
		return fmt.Errorf("its manifest says revision %q, the servers announced %s", pb.Manifest.Revision, want)
	}
	return nil
}
