package raftfsm

import (
	"errors"
	"testing"

	"github.com/meshca/meshca/proto/raftpb"
)

func revokeCmd(rs ...*raftpb.Revocation) *raftpb.Command {
	return &raftpb.Command{Op: &raftpb.Command_Revoke{Revoke: &raftpb.Revoke{Revocations: rs}}}
}

// Revocations are found by issuer, the first of a serial stands, bad ones
// change nothing, and the prune drops those of expired certificates only.
func TestRevocationsByIssuerAndPrune(t *testing.T) {
	a := newApplier(t)
	a.mustApply(revokeCmd(&raftpb.Revocation{IssuerId: "i1", Serial: []byte{2}, NotAfterUnix: 100, Reason: 1},
		&raftpb.Revocation{IssuerId: "i1", Serial: []byte{1}, NotAfterUnix: 300},
		&raftpb.Revocation{IssuerId: "i2", Serial: []byte{1}, NotAfterUnix: 50}))
	a.mustApply(revokeCmd(&raftpb.Revocation{IssuerId: "i1", Serial: []byte{2}, NotAfterUnix: 100, Reason: 4}))
	r := a.f.Read()
	if got := r.RevocationsOf("i1"); len(got) != 2 || got[0].Serial[0] != 1 || got[1].Reason != 1 {
		t.Fatalf("revocations of i1: %v", got)
	}
	for _, bad := range []*raftpb.Revocation{{IssuerId: "i1"}, {Serial: []byte{3}}, {IssuerId: "i1", Serial: make([]byte, 21)}} {
		if err := ResultError(a.apply(revokeCmd(&raftpb.Revocation{IssuerId: "i3", Serial: []byte{7}}, bad))); !errors.Is(err, ErrInvalid) {
			t.Errorf("revocation %v: %v, want invalid", bad, err)
		}
	}
	if got := a.f.Read().RevocationsOf("i3"); len(got) != 0 {
		t.Error("a refused command recorded a revocation")
	}
	a.mustApply(&raftpb.Command{Op: &raftpb.Command_PruneLedger{PruneLedger: &raftpb.PruneLedger{ExpiredBeforeUnix: 101}}})
	r = a.f.Read()
	if got := r.RevocationsOf("i1"); len(got) != 1 || got[0].NotAfterUnix != 300 {
		t.Errorf("after the prune i1 has %v, want only the unexpired one", got)
	}
	if got := r.RevocationsOf("i2"); len(got) != 0 {
		t.Errorf("after the prune i2 has %v", got)
	}
}

// A ban sets the flag and records its revocations in one step; unknown
// nodes and unbans with revocations are refused; eviction forgets the node.
func TestBanUnbanEvict(t *testing.T) {
	a := newApplier(t)
	const node = "spiffe://example.org/meshca/agent/x/1"
	ban := func(banned bool, rs ...*raftpb.Revocation) *raftpb.Command {
		return &raftpb.Command{Op: &raftpb.Command_BanNode{BanNode: &raftpb.BanNode{NodeId: node, Banned: banned, Revocations: rs}}}
	}
	if err := ResultError(a.apply(ban(true))); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ban of an unknown node: %v", err)
	}
	a.mustApply(&raftpb.Command{Op: &raftpb.Command_PutNode{PutNode: &raftpb.PutNode{Node: &raftpb.Node{SpiffeId: node}}}})
	if err := ResultError(a.apply(ban(true, &raftpb.Revocation{IssuerId: "i"}))); !errors.Is(err, ErrInvalid) {
		t.Fatalf("ban with a bad revocation: %v", err)
	}
	if a.f.Read().Node(node).Banned {
		t.Fatal("a refused ban banned the node")
	}
	a.mustApply(ban(true, &raftpb.Revocation{IssuerId: "i", Serial: []byte{5}, NodeId: node}))
	r := a.f.Read()
	if !r.Node(node).Banned || !r.Revoked("i", []byte{5}) {
		t.Fatal("ban not recorded with its revocation")
	}
	// A certificate signed for it by a server that had not applied the ban
	// yet is refused; another node's in the same batch is recorded.
	res := a.mustApply(&raftpb.Command{Op: &raftpb.Command_AppendLedger{AppendLedger: &raftpb.AppendLedger{Records: []*raftpb.LedgerRecord{
		{Serial: []byte("a"), SpiffeId: "spiffe://example.org/w", NodeId: node},
		{Serial: []byte("b"), SpiffeId: "spiffe://example.org/w", NodeId: "spiffe://example.org/meshca/agent/x/2"}}}}})
	if len(res.Rejected) != 1 || res.Rejected[0] != 0 || len(res.Banned) != 1 || res.Banned[0] != 0 || a.f.Read().LedgerRecord([]byte("b")) == nil {
		t.Errorf("append for a banned node: %v", res)
	}
	if err := ResultError(a.apply(ban(false, &raftpb.Revocation{IssuerId: "i", Serial: []byte{6}}))); !errors.Is(err, ErrInvalid) {
		t.Errorf("unban with revocations: %v", err)
	}
	a.mustApply(ban(false))
	if r := a.f.Read(); r.Node(node).Banned || !r.Revoked("i", []byte{5}) {
		t.Error("unban must clear the flag and keep the revocations")
	}
	a.mustApply(&raftpb.Command{Op: &raftpb.Command_EvictNode{EvictNode: &raftpb.EvictNode{NodeId: node}}})
	if a.f.Read().Node(node) != nil {
		t.Error("evicted node still recorded")
	}
	if err := ResultError(a.apply(&raftpb.Command{Op: &raftpb.Command_EvictNode{EvictNode: &raftpb.EvictNode{NodeId: node}}})); !errors.Is(err, ErrNotFound) {
		t.Errorf("evicting an unknown node: %v", err)
	}
}

// A revocation or a ban wakes the revocation scope; a ledger append does not.
func TestRevocationScope(t *testing.T) {
	a := newApplier(t)
	w := a.f.Watch(ScopeRevocations)
	a.mustApply(ledger("s1"))
	select {
	case <-w:
		t.Fatal("a ledger append woke the revocation scope")
	default:
	}
	a.mustApply(revokeCmd(&raftpb.Revocation{IssuerId: "i", Serial: []byte{1}}))
	select {
	case <-w:
	default:
		t.Fatal("a revocation did not wake the revocation scope")
	}
}

// Taint and revoke follow the lifecycle: an active root cannot be
// tainted, only a tainted authority revoked, and an intermediate's
// revocation goes to its parent's list.
func TestTaintAndRevokeAuthority(t *testing.T) {
	a := newApplier(t)
	root := &raftpb.Authority{Id: "ecdsa/root/1", Profile: "ecdsa", Kind: raftpb.AuthorityKind_ROOT, State: raftpb.AuthorityState_ACTIVE, Certificate: []byte{1}}
	inter := &raftpb.Authority{Id: "ecdsa/intermediate/2", Profile: "ecdsa", Kind: raftpb.AuthorityKind_INTERMEDIATE, State: raftpb.AuthorityState_ACTIVE,
		Certificate: []byte{2}, ParentId: root.Id, ServerId: "s1"}
	prep := &raftpb.Authority{Id: "ecdsa/intermediate/3", Profile: "ecdsa", Kind: raftpb.AuthorityKind_INTERMEDIATE, State: raftpb.AuthorityState_PREPARED,
		Certificate: []byte{3}, ParentId: root.Id, ServerId: "s1"}
	for _, x := range []*raftpb.Authority{root, inter, prep} {
		a.mustApply(&raftpb.Command{Op: &raftpb.Command_PutAuthority{PutAuthority: &raftpb.PutAuthority{Authority: x}}})
	}
	taint := func(id string) error {
		return ResultError(a.apply(&raftpb.Command{Op: &raftpb.Command_TaintAuthority{TaintAuthority: &raftpb.TaintAuthority{Id: id}}}))
	}
	revoke := func(id string, rv *raftpb.Revocation) error {
		return ResultError(a.apply(&raftpb.Command{Op: &raftpb.Command_RevokeAuthority{RevokeAuthority: &raftpb.RevokeAuthority{Id: id, Revocation: rv}}}))
	}
	for id, want := range map[string]error{root.Id: ErrInvalid, prep.Id: ErrInvalid, "nope": ErrNotFound} {
		if err := taint(id); !errors.Is(err, want) {
			t.Errorf("taint %s: %v, want %v", id, err, want)
		}
	}
	if err := revoke(inter.Id, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("revoking an active authority: %v", err)
	}
	if err := taint(inter.Id); err != nil {
		t.Fatal(err)
	}
	if err := taint(inter.Id); err != nil {
		t.Errorf("taint again: %v", err)
	}
	if err := revoke(inter.Id, &raftpb.Revocation{IssuerId: "elsewhere", Serial: []byte{2}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("revocation recorded for another issuer: %v", err)
	}
	if s := a.f.Read().Authority(inter.Id).State; s != raftpb.AuthorityState_TAINTED {
		t.Fatalf("after refused revocations: %s", s)
	}
	if err := revoke(inter.Id, &raftpb.Revocation{IssuerId: root.Id, Serial: []byte{2}}); err != nil {
		t.Fatal(err)
	}
	r := a.f.Read()
	if r.Authority(inter.Id).State != raftpb.AuthorityState_REVOKED || !r.Revoked(root.Id, []byte{2}) {
		t.Error("revocation not recorded")
	}
	if err := taint(inter.Id); !errors.Is(err, ErrInvalid) {
		t.Errorf("tainting a revoked authority: %v", err)
	}
}

// The ledger finds records by issuer, and forgets them when pruned.
func TestLedgerByIssuer(t *testing.T) {
	a := newApplier(t)
	a.mustApply(&raftpb.Command{Op: &raftpb.Command_AppendLedger{AppendLedger: &raftpb.AppendLedger{Records: []*raftpb.LedgerRecord{
		{Serial: []byte("a"), SpiffeId: "spiffe://x/a", IssuerId: "i1", NotAfterUnix: 10},
		{Serial: []byte("b"), SpiffeId: "spiffe://x/b", IssuerId: "i1", NotAfterUnix: 1000},
		{Serial: []byte("c"), SpiffeId: "spiffe://x/c", IssuerId: "i2", NotAfterUnix: 1000}}}}})
	if got := a.f.Read().LedgerByIssuer("i1"); len(got) != 2 {
		t.Fatalf("by issuer: %v", got)
	}
	a.mustApply(&raftpb.Command{Op: &raftpb.Command_PruneLedger{PruneLedger: &raftpb.PruneLedger{ExpiredBeforeUnix: 100}}})
	if got := a.f.Read().LedgerByIssuer("i1"); len(got) != 1 || string(got[0].Serial) != "b" {
		t.Fatalf("by issuer after the prune: %v", got)
	}
}

// Requested steps follow the lifecycle and are recorded on the authority.
func TestRequestAuthorityStep(t *testing.T) {
	a := newApplier(t)
	active := &raftpb.Authority{Id: "ecdsa/intermediate/1", Profile: "ecdsa", Kind: raftpb.AuthorityKind_INTERMEDIATE, State: raftpb.AuthorityState_ACTIVE,
		Certificate: []byte{1}, ServerId: "s1"}
	a.mustApply(&raftpb.Command{Op: &raftpb.Command_PutAuthority{PutAuthority: &raftpb.PutAuthority{Authority: active}}})
	step := func(id, s string) error {
		return ResultError(a.apply(&raftpb.Command{Op: &raftpb.Command_RequestAuthorityStep{RequestAuthorityStep: &raftpb.RequestAuthorityStep{Id: id, Step: s}}}))
	}
	if err := step(active.Id, StepActivate); !errors.Is(err, ErrInvalid) {
		t.Errorf("activate with nothing prepared: %v", err)
	}
	if err := step(active.Id, "bogus"); !errors.Is(err, ErrInvalid) {
		t.Errorf("unknown step: %v", err)
	}
	if err := step(active.Id, StepPrepare); err != nil || a.f.Read().Authority(active.Id).RequestedStep != StepPrepare {
		t.Fatalf("prepare: %v", err)
	}
	prep := &raftpb.Authority{Id: "ecdsa/intermediate/2", Profile: "ecdsa", Kind: raftpb.AuthorityKind_INTERMEDIATE, State: raftpb.AuthorityState_PREPARED,
		Certificate: []byte{2}, ServerId: "s1"}
	a.mustApply(&raftpb.Command{Op: &raftpb.Command_PutAuthority{PutAuthority: &raftpb.PutAuthority{Authority: prep}}})
	if err := step(active.Id, StepPrepare); !errors.Is(err, ErrAlreadyExists) {
		t.Errorf("prepare with one prepared: %v", err)
	}
	if err := step(prep.Id, StepActivate); err != nil {
		t.Errorf("activate the prepared one: %v", err)
	}
	// A dry run decides the same without changing anything.
	c := &raftpb.Command{Op: &raftpb.Command_RequestAuthorityStep{RequestAuthorityStep: &raftpb.RequestAuthorityStep{Id: active.Id, Step: StepPrepare}}}
	before, _ := a.f.StateHash()
	if err := a.f.CheckCommand(c); !errors.Is(err, ErrAlreadyExists) {
		t.Errorf("CheckCommand: %v", err)
	}
	if after, _ := a.f.StateHash(); after != before {
		t.Error("CheckCommand changed the state")
	}
}
