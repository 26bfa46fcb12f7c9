package raftfsm

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/meshca/meshca/proto/raftpb"
	"google.golang.org/protobuf/proto"
)

// A proposal retried with its request ID (its first answer was lost in a
// leader change) gets the first result and changes nothing again; the
// remembered IDs are in snapshots and are pruned with the authorities.
func TestRequestIDsAreAppliedOnce(t *testing.T) {
	a := newApplier(t)
	a.mustApply(cmdToken("tok", "agent", a.now+int64(time.Hour)))
	consume := func() *raftpb.Command {
		c := cmdConsume("tok", "agent", "spiffe://example.org/meshca/agent/a")
		c.Header = &raftpb.Header{RequestId: "consume-1", TimeUnixNano: a.now, Proposer: "s1"}
		return c
	}
	if r := a.apply(consume()); r.Code != raftpb.ErrorCode_OK {
		t.Fatalf("first consume: %v", r)
	}
	if r := a.apply(consume()); r.Code != raftpb.ErrorCode_OK {
		t.Fatalf("the same proposal again: %v, want the first result (OK)", r)
	}
	other := cmdConsume("tok", "agent", "spiffe://example.org/meshca/agent/a")
	if r := a.apply(other); r.Code != raftpb.ErrorCode_TOKEN_CONSUMED {
		t.Fatalf("another proposal: %v, want TOKEN_CONSUMED", r)
	}

	// Snapshots carry the remembered IDs: a restored replica dedupes too.
	b := newApplier(t)
	b.index = a.index
	if err := b.f.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, a.f)))); err != nil {
		t.Fatal(err)
	}
	if r := b.apply(consume()); r.Code != raftpb.ErrorCode_OK {
		t.Fatalf("retry on a restored replica: %v", r)
	}

	// Pruning forgets IDs older than the cutoff.
	a.mustApply(&raftpb.Command{Op: &raftpb.Command_PruneLedger{PruneLedger: &raftpb.PruneLedger{
		ExpiredBeforeUnix: 1, AuthoritiesExpiredBeforeUnix: a.now/1e9 + 1}}})
	if r := a.apply(consume()); r.Code != raftpb.ErrorCode_TOKEN_CONSUMED {
		t.Fatalf("after pruning the ID, the proposal is new: %v, want TOKEN_CONSUMED", r)
	}
}

// The consumer of a token may present it again with the same attempt ID
// before it expires (its answer was lost); no one else may.
func TestJoinTokenAttemptMayRetry(t *testing.T) {
	a := newApplier(t)
	a.mustApply(cmdToken("tok", "agent", a.now+int64(time.Hour)))
	c := func(by, attempt string) *raftpb.Command {
		return &raftpb.Command{Op: &raftpb.Command_ConsumeJoinToken{ConsumeJoinToken: &raftpb.ConsumeJoinToken{
			Hash: tokenHash("tok"), Kind: "agent", Consumer: by, Attempt: attempt}}}
	}
	a.mustApply(c("agent-a", "att-1"))
	a.mustApply(c("agent-a", "att-1"))
	for name, cmd := range map[string]*raftpb.Command{
		"other attempt":  c("agent-a", "att-2"),
		"other consumer": c("agent-b", "att-1"),
		"no attempt":     c("agent-a", ""),
	} {
		if r := a.apply(cmd); r.Code != raftpb.ErrorCode_TOKEN_CONSUMED {
			t.Errorf("%s: %v, want TOKEN_CONSUMED", name, r)
		}
	}
	a.now += int64(2 * time.Hour)
	if r := a.apply(c("agent-a", "att-1")); r.Code != raftpb.ErrorCode_TOKEN_EXPIRED {
		t.Errorf("same attempt after expiry: %v, want TOKEN_EXPIRED", r)
	}
}

func attestCmd(token string, node, serial string) *raftpb.Command {
	op := &raftpb.AttestAgent{
		Node:   &raftpb.Node{SpiffeId: node, Attestor: "join_token"},
		Record: &raftpb.LedgerRecord{Serial: []byte(serial), SpiffeId: node, NodeId: node, NotAfterUnix: 2000, RequestId: "r-" + serial},
	}
	if token != "" {
		op.Token = &raftpb.ConsumeJoinToken{Hash: tokenHash(token), Kind: "agent", Consumer: node, Attempt: "att"}
	}
	return &raftpb.Command{Op: &raftpb.Command_AttestAgent{AttestAgent: op}}
}

// AttestAgent consumes the token, records the node and appends the SVID's
// ledger record, or does none of it.
func TestAttestAgentIsAllOrNothing(t *testing.T) {
	a := newApplier(t)
	const agent = "spiffe://example.org/meshca/agent/join_token/x"
	if r := a.apply(attestCmd("unknown", agent, "s0")); r.Code != raftpb.ErrorCode_NOT_FOUND {
		t.Fatalf("unknown token: %v", r)
	}
	if r := a.f.Read(); r.Node(agent) != nil || r.LedgerRecord([]byte("s0")) != nil {
		t.Fatal("a refused attestation recorded the node or its SVID")
	}
	a.mustApply(cmdToken("tok", "agent", a.now+int64(time.Hour)))
	a.mustApply(ledger("taken"))
	if r := a.apply(attestCmd("tok", agent, "taken")); r.Code != raftpb.ErrorCode_CONFLICT {
		t.Fatalf("serial collision: %v, want CONFLICT", r)
	}
	if tok := a.f.Read().JoinToken(tokenHash("tok")); tok.ConsumedUnixNano != 0 {
		t.Fatal("an attestation refused for its serial consumed the token")
	}
	a.mustApply(attestCmd("tok", agent, "s1"))
	r := a.f.Read()
	if r.Node(agent) == nil || r.LedgerRecord([]byte("s1")) == nil || r.JoinToken(tokenHash("tok")).ConsumedBy != agent {
		t.Fatal("attestation did not record the token, node and SVID together")
	}
	// Renewal: the same command without a token updates the node.
	renew := attestCmd("", agent, "s2")
	renew.GetAttestAgent().Node.ExpiresUnixNano = 42
	a.mustApply(renew)
	if n := a.f.Read().Node(agent); n.ExpiresUnixNano != 42 {
		t.Fatalf("renewal did not update the node's expiry: %v", n)
	}
	// A banned node gets nothing.
	banned := proto.Clone(a.f.Read().Node(agent)).(*raftpb.Node)
	banned.Banned = true
	a.mustApply(&raftpb.Command{Op: &raftpb.Command_PutNode{PutNode: &raftpb.PutNode{Node: banned}}})
	if r := a.apply(attestCmd("", agent, "s3")); r.Code != raftpb.ErrorCode_INVALID {
		t.Fatalf("banned node: %v, want INVALID", r)
	}
}

func authority(id, server string, state raftpb.AuthorityState, notAfter int64) *raftpb.Authority {
	return &raftpb.Authority{Id: id, Profile: "ecdsa", Kind: raftpb.AuthorityKind_INTERMEDIATE, State: state,
		Certificate: []byte("der-" + id), ServerId: server, NotAfterUnix: notAfter}
}

func putAuthority(a *raftpb.Authority) *raftpb.Command {
	return &raftpb.Command{Op: &raftpb.Command_PutAuthority{PutAuthority: &raftpb.PutAuthority{Authority: a}}}
}

// Activating an intermediate makes the one of the same server and profile
// that was active OLD, and leaves other servers' alone; an operator's
// taint cannot be undone by activating.
func TestActivateAuthority(t *testing.T) {
	a := newApplier(t)
	a.mustApply(putAuthority(authority("i1", "s1", raftpb.AuthorityState_ACTIVE, 100)))
	a.mustApply(putAuthority(authority("j1", "s2", raftpb.AuthorityState_ACTIVE, 100)))
	a.mustApply(putAuthority(authority("i2", "s1", raftpb.AuthorityState_PREPARED, 200)))
	act := func(id string) *raftpb.Result {
		return a.apply(&raftpb.Command{Op: &raftpb.Command_ActivateAuthority{ActivateAuthority: &raftpb.ActivateAuthority{Id: id}}})
	}
	if r := act("i2"); r.Code != raftpb.ErrorCode_OK {
		t.Fatal(r)
	}
	r := a.f.Read()
	for id, want := range map[string]raftpb.AuthorityState{"i1": raftpb.AuthorityState_OLD, "i2": raftpb.AuthorityState_ACTIVE, "j1": raftpb.AuthorityState_ACTIVE} {
		if got := r.Authority(id).State; got != want {
			t.Errorf("%s is %s, want %s", id, got, want)
		}
	}
	if r := act("i2"); r.Code != raftpb.ErrorCode_OK {
		t.Errorf("activating the active one again: %v", r)
	}
	a.mustApply(putAuthority(authority("i3", "s1", raftpb.AuthorityState_TAINTED, 300)))
	if r := act("i3"); r.Code != raftpb.ErrorCode_INVALID {
		t.Errorf("activating a tainted authority: %v, want INVALID", r)
	}
	if r := act("nope"); r.Code != raftpb.ErrorCode_NOT_FOUND {
		t.Errorf("activating an unknown authority: %v", r)
	}
	// Pruning drops intermediates that expired before the cutoff.
	a.mustApply(&raftpb.Command{Op: &raftpb.Command_PruneLedger{PruneLedger: &raftpb.PruneLedger{ExpiredBeforeUnix: 1, AuthoritiesExpiredBeforeUnix: 150}}})
	if r := a.f.Read(); r.Authority("i1") != nil || r.Authority("j1") != nil || r.Authority("i2") == nil {
		t.Error("pruning did not drop exactly the intermediates expired before the cutoff")
	}
}

// There is at most one prepared JWT key; activating it makes the active
// one OLD, and keys written before states existed count as active.
func TestJWTKeyStates(t *testing.T) {
	a := newApplier(t)
	put := func(kid string, state raftpb.AuthorityState) *raftpb.Result {
		return a.apply(&raftpb.Command{Op: &raftpb.Command_PutJwtKey{PutJwtKey: &raftpb.PutJWTKey{Key: &raftpb.JWTKey{
			Kid: kid, PublicKey: []byte("pub"), State: state, NotAfterUnix: 1000}}}})
	}
	if r := put("legacy", raftpb.AuthorityState_AUTHORITY_STATE_UNSPECIFIED); r.Code != raftpb.ErrorCode_OK {
		t.Fatal(r)
	}
	if r := put("next", raftpb.AuthorityState_PREPARED); r.Code != raftpb.ErrorCode_OK {
		t.Fatal(r)
	}
	if r := put("second", raftpb.AuthorityState_PREPARED); r.Code != raftpb.ErrorCode_ALREADY_EXISTS {
		t.Fatalf("a second prepared key: %v, want ALREADY_EXISTS", r)
	}
	a.mustApply(&raftpb.Command{Op: &raftpb.Command_ActivateJwtKey{ActivateJwtKey: &raftpb.ActivateJWTKey{Kid: "next"}}})
	states := map[string]raftpb.AuthorityState{}
	for _, k := range a.f.Read().JWTKeys() {
		states[k.Kid] = k.State
	}
	if states["next"] != raftpb.AuthorityState_ACTIVE || states["legacy"] != raftpb.AuthorityState_OLD {
		t.Fatalf("after activation: %v", states)
	}
}

// AdmitServer consumes the server token and records the server and its
// intermediates together; the same attempt again replaces the
// intermediates of its lost first answer.
func TestAdmitServer(t *testing.T) {
	a := newApplier(t)
	a.mustApply(cmdToken("stok", "server", a.now+int64(time.Hour)))
	admit := func(attempt string, inter ...string) *raftpb.Result {
		op := &raftpb.AdmitServer{Token: &raftpb.ConsumeJoinToken{Hash: tokenHash("stok"), Kind: "server", Consumer: "s2", Attempt: attempt},
			Server: &raftpb.Server{NodeId: "s2", RaftAddr: "r", ApiAddr: "a"}}
		for _, id := range inter {
			op.Intermediates = append(op.Intermediates, authority(id, "s2", raftpb.AuthorityState_ACTIVE, 100))
		}
		return a.apply(&raftpb.Command{Op: &raftpb.Command_AdmitServer{AdmitServer: op}})
	}
	if r := admit("att", "bad-"); r.Code != raftpb.ErrorCode_OK {
		t.Fatal(r)
	}
	if r := admit("att", "good"); r.Code != raftpb.ErrorCode_OK {
		t.Fatalf("the same attempt again: %v", r)
	}
	rd := a.f.Read()
	if rd.Server("s2") == nil || rd.Authority("good").State != raftpb.AuthorityState_ACTIVE || rd.Authority("bad-").State != raftpb.AuthorityState_OLD {
		t.Fatalf("after the retried admission: server %v, good %v, first %v", rd.Server("s2"), rd.Authority("good"), rd.Authority("bad-"))
	}
	if r := admit("other", "x"); !errors.Is(ResultError(r), ErrTokenConsumed) {
		t.Fatalf("another attempt with the used token: %v", r)
	}
}

// AdmitServer by a pre-shared server-join secret needs no token: it
// records the join attempt, admits the same attempt again (its answer was
// lost) and refuses another server of the same name.
func TestAdmitServerBySecret(t *testing.T) {
	a := newApplier(t)
	admit := func(attempt, inter string) *raftpb.Result {
		op := &raftpb.AdmitServer{JoinSecretId: "0123456789abcdef",
			Server:        &raftpb.Server{NodeId: "meshca-1", RaftAddr: "r", ApiAddr: "a", JoinAttempt: attempt},
			Intermediates: []*raftpb.Authority{authority(inter, "meshca-1", raftpb.AuthorityState_ACTIVE, 100)}}
		return a.apply(&raftpb.Command{Op: &raftpb.Command_AdmitServer{AdmitServer: op}})
	}
	if r := admit("", "i0"); r.Code != raftpb.ErrorCode_INVALID {
		t.Fatalf("admission by secret without an attempt: %v", r)
	}
	if a.f.Read().Server("meshca-1") != nil {
		t.Fatal("a refused admission recorded the server")
	}
	if r := admit("att", "i1"); r.Code != raftpb.ErrorCode_OK {
		t.Fatal(r)
	}
	if r := admit("att", "i2"); r.Code != raftpb.ErrorCode_OK {
		t.Fatalf("the same attempt again: %v", r)
	}
	if r := admit("other", "i3"); r.Code != raftpb.ErrorCode_ALREADY_EXISTS {
		t.Fatalf("another attempt of the same name: %v", r)
	}
	rd := a.f.Read()
	if rd.Server("meshca-1").GetJoinAttempt() != "att" || rd.Authority("i2").State != raftpb.AuthorityState_ACTIVE || rd.Authority("i1").State != raftpb.AuthorityState_OLD || rd.Authority("i3") != nil {
		t.Fatalf("after admissions: server %v, i1 %v, i2 %v, i3 %v", rd.Server("meshca-1"), rd.Authority("i1"), rd.Authority("i2"), rd.Authority("i3"))
	}
	// Neither a token and a secret together, nor neither.
	both := &raftpb.AdmitServer{JoinSecretId: "x", Token: &raftpb.ConsumeJoinToken{Hash: tokenHash("t"), Kind: "server", Consumer: "s9"},
		Server: &raftpb.Server{NodeId: "s9", JoinAttempt: "a"}}
	neither := &raftpb.AdmitServer{Server: &raftpb.Server{NodeId: "s9", JoinAttempt: "a"}}
	for _, op := range []*raftpb.AdmitServer{both, neither} {
		if r := a.apply(&raftpb.Command{Op: &raftpb.Command_AdmitServer{AdmitServer: op}}); r.Code != raftpb.ErrorCode_INVALID {
			t.Fatalf("AdmitServer %v: %v", op, r)
		}
	}
}
