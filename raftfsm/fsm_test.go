package raftfsm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/meshca/meshca/proto/raftpb"
	"google.golang.org/protobuf/proto"
)

// applier feeds commands to an FSM as raft would, with increasing indexes.
type applier struct {
	t     testing.TB
	f     *FSM
	index uint64
	now   int64
}

func newApplier(t testing.TB) *applier {
	return &applier{t: t, f: New(), now: time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC).UnixNano()}
}

func (a *applier) log(c *raftpb.Command) *raft.Log {
	a.t.Helper()
	a.index++
	if c.Header == nil {
		c.Header = &raftpb.Header{RequestId: fmt.Sprint("req-", a.index), TimeUnixNano: a.now, Proposer: "s1"}
	}
	data, err := Encode(c)
	if err != nil {
		a.t.Fatal(err)
	}
	return &raft.Log{Index: a.index, Term: 1, Type: raft.LogCommand, Data: data}
}

func (a *applier) apply(c *raftpb.Command) *raftpb.Result {
	a.t.Helper()
	return a.f.Apply(a.log(c)).(*raftpb.Result)
}

func (a *applier) mustApply(c *raftpb.Command) *raftpb.Result {
	a.t.Helper()
	r := a.apply(c)
	if err := ResultError(r); err != nil {
		a.t.Fatalf("apply %T: %v", c.Op, err)
	}
	return r
}

func tokenHash(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }

func cmdToken(token, kind string, expires int64) *raftpb.Command {
	return &raftpb.Command{Op: &raftpb.Command_CreateJoinToken{CreateJoinToken: &raftpb.CreateJoinToken{
		Token: &raftpb.JoinToken{Hash: tokenHash(token), Kind: kind, ExpiresUnixNano: expires}}}}
}

func cmdConsume(token, kind, by string) *raftpb.Command {
	return &raftpb.Command{Op: &raftpb.Command_ConsumeJoinToken{ConsumeJoinToken: &raftpb.ConsumeJoinToken{
		Hash: tokenHash(token), Kind: kind, Consumer: by}}}
}

func ledger(serials ...string) *raftpb.Command {
	var rs []*raftpb.LedgerRecord
	for i, s := range serials {
		rs = append(rs, &raftpb.LedgerRecord{Serial: []byte(s), SpiffeId: "spiffe://example.org/w", NodeId: "node-1",
			Profile: "ecdsa", IssuerId: "ecdsa/intermediate/1", NotBeforeUnix: 100, NotAfterUnix: int64(1000 + i), RequestId: "r-" + s})
	}
	return &raftpb.Command{Op: &raftpb.Command_AppendLedger{AppendLedger: &raftpb.AppendLedger{Records: rs}}}
}

func TestJoinTokenIsConsumedExactlyOnce(t *testing.T) {
	a := newApplier(t)
	a.mustApply(cmdToken("tok", "server", a.now+int64(time.Minute)))
	if err := ResultError(a.apply(cmdToken("tok", "server", a.now+int64(time.Minute)))); !errors.Is(err, ErrAlreadyExists) {
		t.Errorf("duplicate token: %v", err)
	}
	if err := ResultError(a.apply(cmdConsume("tok", "agent", "n1"))); !errors.Is(err, ErrNotFound) {
		t.Errorf("consume as another kind: %v, want ErrNotFound", err)
	}
	if err := ResultError(a.apply(cmdConsume("nope", "server", "n1"))); !errors.Is(err, ErrNotFound) {
		t.Errorf("consume unknown token: %v, want ErrNotFound", err)
	}
	a.mustApply(cmdConsume("tok", "server", "s2"))
	if err := ResultError(a.apply(cmdConsume("tok", "server", "s3"))); !errors.Is(err, ErrTokenConsumed) {
		t.Errorf("second consume: %v, want ErrTokenConsumed", err)
	}
	if tok := a.f.Read().JoinToken(tokenHash("tok")); tok.ConsumedBy != "s2" || tok.ConsumedUnixNano != a.now {
		t.Errorf("token record %v, want consumed by s2 at the proposer's time", tok)
	}

	a.mustApply(cmdToken("late", "agent", a.now+10))
	a.now += 10 // the proposer's clock, not the replica's, decides expiry
	if err := ResultError(a.apply(cmdConsume("late", "agent", "n1"))); !errors.Is(err, ErrTokenExpired) {
		t.Errorf("expired token: %v, want ErrTokenExpired", err)
	}
}

func TestLedgerAppendIsIdempotentAndRejectsCollisions(t *testing.T) {
	a := newApplier(t)
	r := a.mustApply(ledger("a", "b", "c"))
	if r.Value != 3 || len(r.Rejected) != 0 {
		t.Fatalf("append: %v", r)
	}
	// The same records again (a retry after an unknown outcome): accepted, no duplicates.
	r = a.mustApply(ledger("a", "b"))
	if len(r.Rejected) != 0 {
		t.Errorf("retry rejected %v", r.Rejected)
	}
	// Same serial, another request: a collision, rejected.
	c := ledger("c", "d")
	c.GetAppendLedger().Records[0].RequestId = "other"
	r = a.mustApply(c)
	if len(r.Rejected) != 1 || r.Rejected[0] != 0 {
		t.Errorf("collision: rejected %v, want [0]", r.Rejected)
	}
	rd := a.f.Read()
	if n := rd.LedgerLen(); n != 4 {
		t.Errorf("ledger has %d records, want 4", n)
	}
	if got := rd.LedgerBySPIFFEID("spiffe://example.org/w"); len(got) != 4 {
		t.Errorf("by SPIFFE ID: %d records", len(got))
	}
	if got := rd.LedgerByNode("node-1"); len(got) != 4 {
		t.Errorf("by node: %d records", len(got))
	}
	// Prune by expiry: a, b expire at 1000, 1001; c at 1002 (first batch), d at 1001.
	r = a.mustApply(&raftpb.Command{Op: &raftpb.Command_PruneLedger{PruneLedger: &raftpb.PruneLedger{ExpiredBeforeUnix: 1002}}})
	if r.Value != 3 {
		t.Errorf("pruned %d, want 3", r.Value)
	}
	if a.f.Read().LedgerRecord([]byte("c")) == nil || a.f.Read().LedgerLen() != 1 {
		t.Error("prune removed the wrong records")
	}
}

func TestEntriesCRLNumbersPolicies(t *testing.T) {
	a := newApplier(t)
	e := &raftpb.Entry{Id: "e1", ParentId: "spiffe://example.org/node/a", SpiffeId: "spiffe://example.org/w", Profile: "ecdsa", CreatedUnixNano: 5}
	put := func(expect uint64) *raftpb.Result {
		return a.apply(&raftpb.Command{Op: &raftpb.Command_PutEntry{PutEntry: &raftpb.PutEntry{Entry: e, ExpectRevision: expect}}})
	}
	if r := put(0); r.Code != raftpb.ErrorCode_OK || r.Value != 1 {
		t.Fatalf("create: %v", r)
	}
	if err := ResultError(put(0)); !errors.Is(err, ErrAlreadyExists) {
		t.Errorf("create twice: %v", err)
	}
	if err := ResultError(put(7)); !errors.Is(err, ErrConflict) {
		t.Errorf("stale update: %v", err)
	}
	if r := put(1); r.Value != 2 {
		t.Errorf("update: %v", r)
	}
	if got := a.f.Read().EntriesByParent("spiffe://example.org/node/a"); len(got) != 1 || got[0].Revision != 2 {
		t.Errorf("by parent: %v", got)
	}

	auth := &raftpb.Authority{Id: "ecdsa/root/1", Profile: "ecdsa", Kind: raftpb.AuthorityKind_ROOT, State: raftpb.AuthorityState_ACTIVE, Certificate: []byte{1}}
	a.mustApply(&raftpb.Command{Op: &raftpb.Command_PutAuthority{PutAuthority: &raftpb.PutAuthority{Authority: auth}}})
	for want := uint64(1); want <= 3; want++ {
		if r := a.mustApply(&raftpb.Command{Op: &raftpb.Command_NextCrlNumber{NextCrlNumber: &raftpb.NextCRLNumber{AuthorityId: auth.Id}}}); r.Value != want {
			t.Errorf("CRL number %d, want %d", r.Value, want)
		}
	}
	if err := ResultError(a.apply(&raftpb.Command{Op: &raftpb.Command_NextCrlNumber{NextCrlNumber: &raftpb.NextCRLNumber{AuthorityId: "nope"}}})); !errors.Is(err, ErrNotFound) {
		t.Errorf("CRL number of unknown authority: %v", err)
	}
	for want := uint64(1); want <= 2; want++ {
		r := a.mustApply(&raftpb.Command{Op: &raftpb.Command_PutPolicy{PutPolicy: &raftpb.PutPolicy{Policy: &raftpb.Policy{Bundle: []byte("b")}}}})
		if r.Value != want {
			t.Errorf("policy revision %d, want %d", r.Value, want)
		}
	}
	if p := a.f.Read().LatestPolicy(); p.GetRevision() != 2 {
		t.Errorf("latest policy %v", p)
	}
	a.mustApply(&raftpb.Command{Op: &raftpb.Command_Revoke{Revoke: &raftpb.Revoke{Revocations: []*raftpb.Revocation{{IssuerId: auth.Id, Serial: []byte{9}, RevokedUnixNano: 1}}}}})
	if !a.f.Read().Revoked(auth.Id, []byte{9}) || a.f.Read().Revoked(auth.Id, []byte{8}) {
		t.Error("revocation lookup wrong")
	}
	if !a.f.Read().MaybeRevoked([]byte{9}) || a.f.Read().MaybeRevoked([]byte{8}) {
		t.Error("revocation lookup by serial alone wrong")
	}
	if err := ResultError(a.apply(&raftpb.Command{Op: &raftpb.Command_SetTrustDomain{SetTrustDomain: &raftpb.SetTrustDomain{TrustDomain: &raftpb.TrustDomain{Name: "a.org"}}}})); err != nil {
		t.Fatal(err)
	}
	if err := ResultError(a.apply(&raftpb.Command{Op: &raftpb.Command_SetTrustDomain{SetTrustDomain: &raftpb.SetTrustDomain{TrustDomain: &raftpb.TrustDomain{Name: "b.org"}}}})); !errors.Is(err, ErrConflict) {
		t.Errorf("changing the trust domain: %v", err)
	}
}

// fillState applies a mix of every command kind.
func fillState(a *applier, ledgerRecords int) {
	a.mustApply(&raftpb.Command{Op: &raftpb.Command_SetTrustDomain{SetTrustDomain: &raftpb.SetTrustDomain{TrustDomain: &raftpb.TrustDomain{Name: "example.org", KekId: "k"}}}})
	a.mustApply(&raftpb.Command{Op: &raftpb.Command_PutServer{PutServer: &raftpb.PutServer{Server: &raftpb.Server{NodeId: "s1", RaftAddr: "127.0.0.1:1"}}}})
	a.mustApply(&raftpb.Command{Op: &raftpb.Command_PutAuthority{PutAuthority: &raftpb.PutAuthority{Authority: &raftpb.Authority{Id: "ecdsa/root/1", Profile: "ecdsa", Certificate: []byte{1, 2}}}}})
	a.mustApply(&raftpb.Command{Op: &raftpb.Command_PutNode{PutNode: &raftpb.PutNode{Node: &raftpb.Node{SpiffeId: "spiffe://example.org/node/1"}}}})
	a.mustApply(cmdToken("t1", "agent", a.now+1e9))
	a.mustApply(&raftpb.Command{Op: &raftpb.Command_PutPolicy{PutPolicy: &raftpb.PutPolicy{Policy: &raftpb.Policy{Bundle: []byte("p")}}}})
	a.mustApply(&raftpb.Command{Op: &raftpb.Command_Revoke{Revoke: &raftpb.Revoke{Revocations: []*raftpb.Revocation{{IssuerId: "i", Serial: []byte{1}}}}}})
	var serials []string
	for i := 0; i < ledgerRecords; i++ {
		serials = append(serials, fmt.Sprintf("serial-%06d", i))
	}
	a.mustApply(ledger(serials...))
	a.mustApply(&raftpb.Command{Op: &raftpb.Command_PutJwtKey{PutJwtKey: &raftpb.PutJWTKey{Key: &raftpb.JWTKey{Kid: "k1", PublicKey: []byte{1}}}}})
}

type bufSink struct {
	bytes.Buffer
	cancelled bool
}

func (s *bufSink) ID() string    { return "test" }
func (s *bufSink) Cancel() error { s.cancelled = true; return nil }
func (s *bufSink) Close() error  { return nil }

func snapshotBytes(t testing.TB, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink bufSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	return sink.Bytes()
}

func TestSnapshotRoundTripAndDeterminism(t *testing.T) {
	a, b := newApplier(t), newApplier(t)
	fillState(a, 500)
	fillState(b, 500)
	ha, _ := a.f.StateHash()
	hb, _ := b.f.StateHash()
	if ha != hb {
		t.Fatal("the same commands gave different state hashes")
	}
	data := snapshotBytes(t, a.f)
	// A snapshot captures the state at Snapshot() time, whatever is applied later.
	c := New()
	if err := c.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	hc, _ := c.StateHash()
	if hc != ha || c.AppliedIndex() != a.f.AppliedIndex() {
		t.Errorf("restored: hash equal %v, index %d want %d", hc == ha, c.AppliedIndex(), a.f.AppliedIndex())
	}
	if c.Read().LedgerLen() != 500 || c.Read().TrustDomain().GetName() != "example.org" {
		t.Error("restored state incomplete")
	}
	if len(c.Read().JWTKeys()) != 1 {
		t.Error("restored state lacks the JWT key")
	}
	if n := len(c.Read().LedgerBySPIFFEID("spiffe://example.org/w")); n != 500 {
		t.Errorf("restored SPIFFE ID index finds %d records, want 500", n)
	}
	if n := len(c.Read().LedgerByNode("node-1")); n != 500 {
		t.Errorf("restored node index finds %d records, want 500", n)
	}
	index, sum, err := VerifySnapshot(bytes.NewReader(data))
	if err != nil || sum != ha || index != a.f.AppliedIndex() {
		t.Errorf("VerifySnapshot: %v, sum equal %v, index %d", err, sum == ha, index)
	}
	// A change changes the hash.
	a.mustApply(ledger("one-more"))
	if h, _ := a.f.StateHash(); h == ha {
		t.Error("state hash did not change with the state")
	}
}

func TestCorruptSnapshotIsRefusedAndStateKept(t *testing.T) {
	src := newApplier(t)
	fillState(src, 50)
	data := snapshotBytes(t, src.f)

	dst := newApplier(t)
	fillState(dst, 3)
	before, _ := dst.f.StateHash()
	beforeIndex := dst.f.AppliedIndex()

	cases := map[string][]byte{
		"empty":        nil,
		"bad-magic":    append([]byte("XESHCA"), data[6:]...),
		"truncated":    data[:len(data)/2],
		"no-checksum":  data[:len(data)-32],
		"trailing":     append(bytes.Clone(data), 0),
		"flipped-body": flip(data, len(data)/2),
		"flipped-sum":  flip(data, len(data)-1),
		"flipped-idx":  flip(data, len(snapshotMagic)+1),
	}
	for name, b := range cases {
		err := dst.f.Restore(io.NopCloser(bytes.NewReader(b)))
		if !errors.Is(err, ErrCorruptSnapshot) {
			t.Errorf("%s: error %v, want ErrCorruptSnapshot", name, err)
		}
	}
	if after, _ := dst.f.StateHash(); after != before || dst.f.AppliedIndex() != beforeIndex {
		t.Error("a refused snapshot changed the state")
	}
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x40
	return c
}

func TestWaitApplied(t *testing.T) {
	a := newApplier(t)
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- a.f.WaitApplied(ctx, 3)
	}()
	for i := 0; i < 3; i++ {
		a.mustApply(ledger(fmt.Sprint(i)))
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := a.f.WaitApplied(ctx, 100); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled wait: %v", err)
	}
}

func TestUnknownCommandStopsTheReplica(t *testing.T) {
	a := newApplier(t)
	defer func() {
		if recover() == nil {
			t.Error("an unknown command was applied silently")
		}
	}()
	a.f.Apply(a.log(&raftpb.Command{}))
}

func TestBatchApplySkipsNonCommands(t *testing.T) {
	a := newApplier(t)
	logs := []*raft.Log{a.log(ledger("x")), {Index: 99, Type: raft.LogConfiguration}}
	out := a.f.ApplyBatch(logs)
	if len(out) != 2 || out[1] != nil || a.f.AppliedIndex() != 99 {
		t.Errorf("results %v, applied %d", out, a.f.AppliedIndex())
	}
}

// Within one group commit, a repeated serial is a retry if its request ID
// matches and a collision otherwise.
func TestLedgerDuplicatesWithinOneBatch(t *testing.T) {
	a := newApplier(t)
	c := ledger("x", "y")
	dup := proto.Clone(c.GetAppendLedger().Records[0]).(*raftpb.LedgerRecord) // same serial and request ID: a retry
	clash := proto.Clone(c.GetAppendLedger().Records[1]).(*raftpb.LedgerRecord)
	clash.RequestId = "someone-else"
	c.GetAppendLedger().Records = append(c.GetAppendLedger().Records, dup, clash)
	r := a.mustApply(c)
	if len(r.Rejected) != 1 || r.Rejected[0] != 3 || r.Value != 3 {
		t.Errorf("result %v: want only the clashing record (3) rejected", r)
	}
	if n := a.f.Read().LedgerLen(); n != 2 {
		t.Errorf("ledger has %d records, want 2", n)
	}
}

// Ledger appends wake Changed but not ConfigChanged; other commands wake both.
func TestConfigChangedIgnoresLedger(t *testing.T) {
	a := newApplier(t)
	changed, config := a.f.Changed(), a.f.ConfigChanged()
	a.mustApply(ledger("x"))
	select {
	case <-changed:
	default:
		t.Error("a ledger append did not wake Changed")
	}
	select {
	case <-config:
		t.Error("a ledger append woke ConfigChanged")
	default:
	}
	a.mustApply(cmdToken("t", "agent", a.now+1e9))
	select {
	case <-config:
	default:
		t.Error("a new join token did not wake ConfigChanged")
	}
}
