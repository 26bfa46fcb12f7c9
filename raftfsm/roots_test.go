package raftfsm

import (
	"errors"
	"strings"
	"testing"

	"github.com/meshca/meshca/proto/raftpb"
)

func rootRec(id string, state raftpb.AuthorityState) *raftpb.Authority {
	return &raftpb.Authority{Id: id, Profile: "ecdsa", Kind: raftpb.AuthorityKind_ROOT, State: state, Certificate: []byte(id), SealedKey: []byte("{}")}
}

func interRec(id, parent string, state raftpb.AuthorityState) *raftpb.Authority {
	return &raftpb.Authority{Id: id, Profile: "ecdsa", Kind: raftpb.AuthorityKind_INTERMEDIATE, State: state, Certificate: []byte(id), ServerId: "s1", ParentId: parent}
}

func putAuth(a *raftpb.Authority) *raftpb.Command {
	return &raftpb.Command{Op: &raftpb.Command_PutAuthority{PutAuthority: &raftpb.PutAuthority{Authority: a}}}
}

func prepareRootCmd(a *raftpb.Authority, of string) *raftpb.Command {
	return &raftpb.Command{Op: &raftpb.Command_PrepareRoot{PrepareRoot: &raftpb.PrepareRoot{Root: a, SuccessorOf: of}}}
}

func activateRootCmd(id string) *raftpb.Command {
	return &raftpb.Command{Op: &raftpb.Command_ActivateRoot{ActivateRoot: &raftpb.ActivateRoot{Id: id}}}
}

// states returns the state of each named authority.
func states(a *applier, ids ...string) []raftpb.AuthorityState {
	var out []raftpb.AuthorityState
	for _, id := range ids {
		if x := a.f.Read().Authority(id); x != nil {
			out = append(out, x.State)
		} else {
			out = append(out, -1)
		}
	}
	return out
}

func sameStates(got []raftpb.AuthorityState, want ...raftpb.AuthorityState) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}

// A root's rotation: refusals (activating with nothing prepared, preparing
// twice, activating before its CRL, tainting the only active root,
// revoking an active root) change nothing and say why; then prepare →
// activate → taint (its intermediates tainted with it) → revoke (them too).
func TestRootRotationSteps(t *testing.T) {
	a := newApplier(t)
	const (
		r1, r2 = "ecdsa/root/01", "ecdsa/root/02"
		i1, i2 = "ecdsa/intermediate/11", "ecdsa/intermediate/12"
	)
	a.mustApply(putAuth(rootRec(r1, raftpb.AuthorityState_ACTIVE)))
	a.mustApply(putAuth(interRec(i1, r1, raftpb.AuthorityState_ACTIVE)))
	a.mustApply(putAuth(interRec(i2, r1, raftpb.AuthorityState_OLD)))
	before, _ := a.f.StateHash()
	refused := func(what string, c *raftpb.Command, want error, words string) {
		t.Helper()
		c.Header = &raftpb.Header{TimeUnixNano: a.now} // no request ID: nothing remembered
		err := ResultError(a.apply(c))
		if !errors.Is(err, want) || !strings.Contains(err.Error(), words) {
			t.Errorf("%s: %v, want %v saying %q", what, err, want, words)
		}
		if h, _ := a.f.StateHash(); h != before {
			t.Fatalf("%s changed the state", what)
		}
	}
	refused("activate with nothing prepared", activateRootCmd(r1), ErrInvalid, "nothing is prepared")
	refused("activate an unknown root", activateRootCmd("ecdsa/root/ff"), ErrNotFound, "no authority")
	refused("taint the only active root", &raftpb.Command{Op: &raftpb.Command_TaintAuthority{TaintAuthority: &raftpb.TaintAuthority{Id: r1}}}, ErrInvalid, "active root")
	refused("revoke the active root", &raftpb.Command{Op: &raftpb.Command_RevokeAuthority{RevokeAuthority: &raftpb.RevokeAuthority{Id: r1}}}, ErrInvalid, "only a tainted authority")
	refused("prepare a successor of a non-active root", prepareRootCmd(rootRec(r2, raftpb.AuthorityState_PREPARED), i1), ErrInvalid, "not the active ecdsa root")
	refused("prepare an active root", prepareRootCmd(rootRec(r2, raftpb.AuthorityState_ACTIVE), r1), ErrInvalid, "PREPARED root")
	noKey := rootRec(r2, raftpb.AuthorityState_PREPARED)
	noKey.SealedKey = nil
	refused("prepare a root without its key", prepareRootCmd(noKey, r1), ErrInvalid, "sealed key")
	refused("activate an intermediate as a root", activateRootCmd(i1), ErrInvalid, "not a root")

	a.mustApply(prepareRootCmd(rootRec(r2, raftpb.AuthorityState_PREPARED), r1))
	a.mustApply(prepareRootCmd(rootRec(r2, raftpb.AuthorityState_PREPARED), r1)) // a retry
	if got := states(a, r1, r2); !sameStates(got, raftpb.AuthorityState_ACTIVE, raftpb.AuthorityState_PREPARED) {
		t.Fatalf("after prepare: %v", got)
	}
	before, _ = a.f.StateHash()
	refused("prepare twice", prepareRootCmd(rootRec("ecdsa/root/03", raftpb.AuthorityState_PREPARED), r1), ErrAlreadyExists, "already prepared")
	refused("activate before the CRL", activateRootCmd(r2), ErrInvalid, "CRL")
	refused("activate the active root with one prepared", activateRootCmd(r1), ErrInvalid, "the prepared ecdsa root is "+r2)

	a.mustApply(&raftpb.Command{Op: &raftpb.Command_PutCrl{PutCrl: &raftpb.PutCRL{Crl: &raftpb.CRL{AuthorityId: r2, Number: 1, Der: []byte{1}}}}})
	a.mustApply(activateRootCmd(r2))
	if got := states(a, r1, r2, i1, i2); !sameStates(got, raftpb.AuthorityState_OLD, raftpb.AuthorityState_ACTIVE, raftpb.AuthorityState_ACTIVE, raftpb.AuthorityState_OLD) {
		t.Fatalf("after activate: %v", got)
	}
	before, _ = a.f.StateHash()
	refused("revoke an old root", &raftpb.Command{Op: &raftpb.Command_RevokeAuthority{RevokeAuthority: &raftpb.RevokeAuthority{Id: r1}}}, ErrInvalid, "taint it first")
	refused("taint the new active root", &raftpb.Command{Op: &raftpb.Command_TaintAuthority{TaintAuthority: &raftpb.TaintAuthority{Id: r2}}}, ErrInvalid, "active root")

	a.mustApply(&raftpb.Command{Op: &raftpb.Command_TaintAuthority{TaintAuthority: &raftpb.TaintAuthority{Id: r1}}})
	if got := states(a, r1, r2, i1, i2); !sameStates(got, raftpb.AuthorityState_TAINTED, raftpb.AuthorityState_ACTIVE, raftpb.AuthorityState_TAINTED, raftpb.AuthorityState_TAINTED) {
		t.Fatalf("after taint: %v", got)
	}
	a.mustApply(&raftpb.Command{Op: &raftpb.Command_RevokeAuthority{RevokeAuthority: &raftpb.RevokeAuthority{Id: r1}}})
	if got := states(a, r1, r2, i1, i2); !sameStates(got, raftpb.AuthorityState_REVOKED, raftpb.AuthorityState_ACTIVE, raftpb.AuthorityState_REVOKED, raftpb.AuthorityState_REVOKED) {
		t.Fatalf("after revoke: %v", got)
	}
	// CheckCommand (an operator's dry run) decides the same and applies nothing.
	before, _ = a.f.StateHash()
	if err := a.f.CheckCommand(activateRootCmd(r2)); !errors.Is(err, ErrInvalid) {
		t.Errorf("dry-run activate of the active root: %v", err)
	}
	if err := a.f.CheckCommand(prepareRootCmd(rootRec("ecdsa/root/04", raftpb.AuthorityState_PREPARED), r2)); err != nil {
		t.Errorf("dry-run prepare: %v", err)
	}
	if h, _ := a.f.StateHash(); h != before || a.f.Read().Authority("ecdsa/root/04") != nil {
		t.Error("a dry run changed the state")
	}
}

// The bundle scope wakes on a root's prepare and activation.
func TestRootStepsWakeTheBundle(t *testing.T) {
	a := newApplier(t)
	a.mustApply(putAuth(rootRec("ecdsa/root/01", raftpb.AuthorityState_ACTIVE)))
	w := a.f.Watch(ScopeBundle)
	a.mustApply(prepareRootCmd(rootRec("ecdsa/root/02", raftpb.AuthorityState_PREPARED), "ecdsa/root/01"))
	select {
	case <-w:
	default:
		t.Fatal("a prepared root did not wake the bundle's watchers")
	}
}

// JWT keys: tainting the active key needs a successor (or a prepared key,
// which it activates), an old one is tainted alone, only a tainted key is
// revoked, refusals change nothing.
func TestTaintAndRevokeJWTKeys(t *testing.T) {
	a := newApplier(t)
	key := func(kid string, state raftpb.AuthorityState) *raftpb.JWTKey {
		return &raftpb.JWTKey{Kid: kid, PublicKey: []byte{1}, SealedKey: []byte{1}, State: state, NotAfterUnix: 1 << 40}
	}
	a.mustApply(&raftpb.Command{Op: &raftpb.Command_PutJwtKey{PutJwtKey: &raftpb.PutJWTKey{Key: key("k1", raftpb.AuthorityState_ACTIVE)}}})
	taint := func(kid string, succ *raftpb.JWTKey) *raftpb.Command {
		return &raftpb.Command{Header: &raftpb.Header{TimeUnixNano: a.now}, Op: &raftpb.Command_TaintJwtKey{TaintJwtKey: &raftpb.TaintJWTKey{Kid: kid, Successor: succ}}}
	}
	revoke := func(kid string) *raftpb.Command {
		return &raftpb.Command{Header: &raftpb.Header{TimeUnixNano: a.now}, Op: &raftpb.Command_RevokeJwtKey{RevokeJwtKey: &raftpb.RevokeJWTKey{Kid: kid}}}
	}
	state := func(kid string) raftpb.AuthorityState {
		for _, k := range a.f.Read().JWTKeys() {
			if k.Kid == kid {
				return k.State
			}
		}
		return -1
	}
	before, _ := a.f.StateHash()
	for _, c := range []struct {
		what string
		cmd  *raftpb.Command
		want error
	}{
		{"taint the active key without a successor", taint("k1", nil), ErrInvalid},
		{"taint an unknown key", taint("nope", nil), ErrNotFound},
		{"revoke the active key", revoke("k1"), ErrInvalid},
	} {
		if err := ResultError(a.apply(c.cmd)); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.what, err, c.want)
		}
	}
	if h, _ := a.f.StateHash(); h != before {
		t.Fatal("a refusal changed the state")
	}
	a.mustApply(taint("k1", key("k2", raftpb.AuthorityState_ACTIVE)))
	if state("k1") != raftpb.AuthorityState_TAINTED || state("k2") != raftpb.AuthorityState_ACTIVE {
		t.Fatalf("after taint: k1 %s, k2 %s", state("k1"), state("k2"))
	}
	// With a prepared key, that one succeeds (the proposer's is unused).
	a.mustApply(&raftpb.Command{Op: &raftpb.Command_PutJwtKey{PutJwtKey: &raftpb.PutJWTKey{Key: key("k3", raftpb.AuthorityState_PREPARED)}}})
	a.mustApply(taint("k2", key("k4", raftpb.AuthorityState_ACTIVE)))
	if state("k2") != raftpb.AuthorityState_TAINTED || state("k3") != raftpb.AuthorityState_ACTIVE || state("k4") != -1 {
		t.Fatalf("after the second taint: k2 %s, k3 %s, k4 %s", state("k2"), state("k3"), state("k4"))
	}
	a.mustApply(revoke("k1"))
	if state("k1") != raftpb.AuthorityState_REVOKED {
		t.Fatalf("after revoke: k1 %s", state("k1"))
	}
}
