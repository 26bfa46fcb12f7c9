package raftfsm

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/meshca/meshca/proto/raftpb"
)

func applyCmd(t *testing.T, f *FSM, index uint64, c *raftpb.Command) error {
	t.Helper()
	if c.Header == nil {
		c.Header = &raftpb.Header{Proposer: "s1"}
	}
	b, err := Encode(c)
	if err != nil {
		t.Fatal(err)
	}
	res := f.Apply(&raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: b}).(*raftpb.Result)
	return ResultError(res)
}

func putBundle(name string, rev uint64, keep uint32) *raftpb.Command {
	return &raftpb.Command{Op: &raftpb.Command_PutOpaBundle{PutOpaBundle: &raftpb.PutOPABundle{Keep: keep,
		Bundle: &raftpb.OPABundle{Name: name, Revision: rev, Bundle: []byte{byte(rev)}}}}}
}

// Bundle revisions are consecutive per name, the history is bounded, a
// watcher of one name wakes for it and not for another, and all of it
// survives a snapshot.
func TestOPABundleRevisions(t *testing.T) {
	f := New()
	authz := f.Watch(ScopeOPABundle("authz"))
	i := uint64(0)
	next := func() uint64 { i++; return i }
	for rev := uint64(1); rev <= 5; rev++ {
		if err := applyCmd(t, f, next(), putBundle("authz", rev, 3)); err != nil {
			t.Fatalf("revision %d: %v", rev, err)
		}
	}
	select {
	case <-authz:
	default:
		t.Fatal("the watcher of bundle authz was not woken")
	}
	other := f.Watch(ScopeOPABundle("other"))
	if err := applyCmd(t, f, next(), putBundle("authz", 7, 3)); !errors.Is(err, ErrConflict) {
		t.Fatalf("a revision that skips one: %v, want CONFLICT", err)
	}
	if err := applyCmd(t, f, next(), putBundle("authz", 5, 3)); !errors.Is(err, ErrConflict) {
		t.Fatalf("a revision again: %v, want CONFLICT", err)
	}
	if err := applyCmd(t, f, next(), putBundle("ingress", 1, 0)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-other:
		t.Fatal("the watcher of bundle other was woken by authz and ingress")
	default:
	}
	r := f.Read()
	var revs []uint64
	for _, b := range r.OPABundles("authz") {
		revs = append(revs, b.Revision)
	}
	if len(revs) != 3 || revs[0] != 3 || revs[2] != 5 {
		t.Fatalf("kept revisions %v, want [3 4 5]", revs)
	}
	if b := r.OPABundle("authz", 0); b.Revision != 5 {
		t.Fatalf("latest is %d", b.Revision)
	}
	if r.OPABundle("authz", 1) != nil {
		t.Fatal("revision 1 is still kept")
	}
	if names := r.OPABundleNames(); len(names) != 2 || names[0].Name != "authz" || names[0].Revision != 5 || names[1].Name != "ingress" {
		t.Fatalf("names %v", names)
	}
	g := New()
	if err := g.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, f)))); err != nil {
		t.Fatal(err)
	}
	h1, _ := f.StateHash()
	h2, _ := g.StateHash()
	if h1 != h2 || g.Read().OPABundle("authz", 4) == nil {
		t.Fatal("the bundles did not survive a snapshot")
	}
}

// One OPA key per trust domain; the same key again is a retry.
func TestOPAKeyOnce(t *testing.T) {
	f := New()
	k := &raftpb.OPAKey{Kid: "k1", PublicKey: []byte{1}, SealedKey: []byte{2}}
	put := func(k *raftpb.OPAKey) *raftpb.Command {
		return &raftpb.Command{Op: &raftpb.Command_PutOpaKey{PutOpaKey: &raftpb.PutOPAKey{Key: k}}}
	}
	if err := applyCmd(t, f, 1, put(k)); err != nil {
		t.Fatal(err)
	}
	if err := applyCmd(t, f, 2, put(k)); err != nil {
		t.Fatalf("the same key again: %v", err)
	}
	if err := applyCmd(t, f, 3, put(&raftpb.OPAKey{Kid: "k2", PublicKey: []byte{3}, SealedKey: []byte{2}})); !errors.Is(err, ErrAlreadyExists) {
		t.Fatalf("a second key: %v", err)
	}
	if got := f.Read().OPAKey(); got.Kid != "k1" {
		t.Fatalf("key %s", got.Kid)
	}
}

// Issuance policy revisions are consecutive and bounded.
func TestIssuancePolicyRevisions(t *testing.T) {
	f := New()
	w := f.Watch(ScopeIssuancePolicy)
	for rev := uint64(1); rev <= 4; rev++ {
		c := &raftpb.Command{Op: &raftpb.Command_PutIssuancePolicy{PutIssuancePolicy: &raftpb.PutIssuancePolicy{Keep: 2,
			Policy: &raftpb.IssuancePolicy{Revision: rev}}}}
		if err := applyCmd(t, f, rev, c); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-w:
	default:
		t.Fatal("not woken")
	}
	if p := f.Read().IssuancePolicy(); p.Revision != 4 {
		t.Fatalf("latest %d", p.Revision)
	}
	if n := len(allOfReader[*raftpb.IssuancePolicy](f.Read(), tableIssuancePolicies)); n != 2 {
		t.Fatalf("%d revisions kept, want 2", n)
	}
}

func allOfReader[T any](r *Reader, table string) []T { return all[T](r, table, "id") }
