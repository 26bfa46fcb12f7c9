package raftfsm

import (
	"bytes"
	"errors"
	"io"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/meshca/meshca/proto/raftpb"
)

// FuzzRestore feeds arbitrary bytes to the snapshot decoder: it must never
// panic, and anything but a well-formed snapshot must be refused as corrupt
// without changing the state. Seeds are in testdata/fuzz/FuzzRestore.
func FuzzRestore(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		fsm := New()
		before, _ := fsm.StateHash()
		err := fsm.Restore(io.NopCloser(bytes.NewReader(data)))
		if err != nil {
			if !errors.Is(err, ErrCorruptSnapshot) {
				t.Fatalf("error %v does not wrap ErrCorruptSnapshot", err)
			}
			if after, _ := fsm.StateHash(); after != before {
				t.Fatal("a refused snapshot changed the state")
			}
			return
		}
		// Accepted: it must re-encode to a snapshot of the same state.
		h1, _ := fsm.StateHash()
		again := New()
		if err := again.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, fsm)))); err != nil {
			t.Fatalf("re-encoded snapshot refused: %v", err)
		}
		if h2, _ := again.StateHash(); h1 != h2 {
			t.Fatal("state changed across re-encoding")
		}
	})
}

// cmdGen turns fuzz bytes into well-formed commands of every type, over
// small alphabets of IDs so that commands meet the same records.
type cmdGen struct {
	b   []byte
	now int64
}

func (g *cmdGen) next() int {
	if len(g.b) == 0 {
		return 0
	}
	v := int(g.b[0])
	g.b = g.b[1:]
	return v
}

func (g *cmdGen) pick(n int) int     { return g.next() % n }
func (g *cmdGen) id(p string) string { return p + strconv.Itoa(g.pick(4)) }

func (g *cmdGen) state() raftpb.AuthorityState { return raftpb.AuthorityState(g.pick(6)) }

func (g *cmdGen) command() *raftpb.Command {
	g.now += int64(g.pick(100)) * int64(time.Second)
	h := &raftpb.Header{RequestId: g.id("req-"), TimeUnixNano: g.now, Proposer: "s1"}
	if g.pick(2) == 0 {
		h.RequestId = "" // half the commands carry no remembered ID
	}
	tok := func() *raftpb.ConsumeJoinToken {
		return &raftpb.ConsumeJoinToken{Hash: []byte(g.id("tok-")), Kind: []string{"agent", "server"}[g.pick(2)], Consumer: g.id("c-"), Attempt: g.id("att-")}
	}
	auth := func() *raftpb.Authority {
		return &raftpb.Authority{Id: g.id("auth-"), Profile: []string{"ecdsa", "sm2"}[g.pick(2)], Kind: raftpb.AuthorityKind(g.pick(3)),
			State: g.state(), Certificate: []byte{1}, ServerId: g.id("s"), NotAfterUnix: int64(g.pick(200))}
	}
	rec := func() *raftpb.LedgerRecord {
		return &raftpb.LedgerRecord{Serial: []byte(g.id("serial-")), SpiffeId: "spiffe://example.org/" + g.id("w"), NodeId: g.id("n"),
			RequestId: g.id("rr-"), NotAfterUnix: int64(g.pick(200))}
	}
	node := func() *raftpb.Node { return &raftpb.Node{SpiffeId: g.id("node-"), Banned: g.pick(4) == 0} }
	c := &raftpb.Command{Header: h}
	switch g.pick(40) {
	case 0:
		c.Op = &raftpb.Command_SetTrustDomain{SetTrustDomain: &raftpb.SetTrustDomain{TrustDomain: &raftpb.TrustDomain{Name: g.id("td")}}}
	case 1:
		c.Op = &raftpb.Command_PutServer{PutServer: &raftpb.PutServer{Server: &raftpb.Server{NodeId: g.id("s")}}}
	case 2:
		c.Op = &raftpb.Command_RemoveServer{RemoveServer: &raftpb.RemoveServer{NodeId: g.id("s")}}
	case 3:
		c.Op = &raftpb.Command_PutAuthority{PutAuthority: &raftpb.PutAuthority{Authority: auth()}}
	case 4:
		c.Op = &raftpb.Command_SetAuthorityState{SetAuthorityState: &raftpb.SetAuthorityState{Id: g.id("auth-"), State: g.state()}}
	case 5:
		c.Op = &raftpb.Command_ActivateAuthority{ActivateAuthority: &raftpb.ActivateAuthority{Id: g.id("auth-")}}
	case 6:
		c.Op = &raftpb.Command_PutEntry{PutEntry: &raftpb.PutEntry{ExpectRevision: uint64(g.pick(3)), Entry: &raftpb.Entry{
			Id: g.id("e"), ParentId: g.id("node-"), SpiffeId: "spiffe://example.org/" + g.id("w")}}}
	case 7:
		c.Op = &raftpb.Command_DeleteEntry{DeleteEntry: &raftpb.DeleteEntry{Id: g.id("e")}}
	case 8:
		c.Op = &raftpb.Command_PutNode{PutNode: &raftpb.PutNode{Node: node()}}
	case 9:
		c.Op = &raftpb.Command_CreateJoinToken{CreateJoinToken: &raftpb.CreateJoinToken{Token: &raftpb.JoinToken{
			Hash: []byte(g.id("tok-")), Kind: []string{"agent", "server"}[g.pick(2)], ExpiresUnixNano: g.now + int64(g.pick(200))*int64(time.Second)}}}
	case 10:
		c.Op = &raftpb.Command_ConsumeJoinToken{ConsumeJoinToken: tok()}
	case 11:
		c.Op = &raftpb.Command_Revoke{Revoke: &raftpb.Revoke{Revocations: []*raftpb.Revocation{{IssuerId: g.id("auth-"), Serial: []byte(g.id("serial-")),
			NotAfterUnix: int64(g.pick(200))}}}}
	case 12:
		c.Op = &raftpb.Command_NextCrlNumber{NextCrlNumber: &raftpb.NextCRLNumber{AuthorityId: g.id("auth-")}}
	case 13:
		c.Op = &raftpb.Command_PutPolicy{PutPolicy: &raftpb.PutPolicy{Policy: &raftpb.Policy{Bundle: []byte{byte(g.pick(3))}}}}
	case 14:
		var recs []*raftpb.LedgerRecord
		for i := g.pick(4); i >= 0; i-- {
			recs = append(recs, rec())
		}
		c.Op = &raftpb.Command_AppendLedger{AppendLedger: &raftpb.AppendLedger{Records: recs}}
	case 15:
		c.Op = &raftpb.Command_PruneLedger{PruneLedger: &raftpb.PruneLedger{ExpiredBeforeUnix: int64(g.pick(200)), AuthoritiesExpiredBeforeUnix: int64(g.pick(3) * 100),
			HoldUnexported: g.pick(2) == 1, ExportedIndex: uint64(g.pick(20)), UnexportedExpiredBeforeUnix: int64(g.pick(200))}}
	case 16:
		c.Op = &raftpb.Command_Noop{Noop: &raftpb.Noop{}}
	case 17:
		c.Op = &raftpb.Command_PutJwtKey{PutJwtKey: &raftpb.PutJWTKey{Key: &raftpb.JWTKey{Kid: g.id("kid-"), PublicKey: []byte{1}, State: g.state(), NotAfterUnix: int64(g.pick(200))}}}
	case 18:
		c.Op = &raftpb.Command_ActivateJwtKey{ActivateJwtKey: &raftpb.ActivateJWTKey{Kid: g.id("kid-")}}
	case 19:
		n, r := node(), rec()
		r.SpiffeId = n.SpiffeId
		op := &raftpb.AttestAgent{Node: n, Record: r}
		if g.pick(2) == 0 {
			op.Token = tok()
		}
		c.Op = &raftpb.Command_AttestAgent{AttestAgent: op}
	case 20:
		srv := &raftpb.Server{NodeId: g.id("s")}
		t := tok()
		t.Consumer = srv.NodeId
		a := auth()
		a.ServerId, a.Kind = srv.NodeId, raftpb.AuthorityKind_INTERMEDIATE
		c.Op = &raftpb.Command_AdmitServer{AdmitServer: &raftpb.AdmitServer{Token: t, Server: srv, Intermediates: []*raftpb.Authority{a}}}
	case 21:
		c.Op = &raftpb.Command_PutCrl{PutCrl: &raftpb.PutCRL{Crl: &raftpb.CRL{AuthorityId: g.id("auth-"), Number: uint64(g.pick(4)),
			Der: []byte{byte(g.pick(3))}}}}
	case 24:
		c.Op = &raftpb.Command_PutAdmin{PutAdmin: &raftpb.PutAdmin{Admin: &raftpb.Admin{SpiffeId: "spiffe://example.org/" + g.id("admin-")}}}
	case 25:
		c.Op = &raftpb.Command_DeleteAdmin{DeleteAdmin: &raftpb.DeleteAdmin{SpiffeId: "spiffe://example.org/" + g.id("admin-")}}
	case 22: // issue 16a
		var es []*raftpb.Entry
		for i := g.pick(3); i >= 0; i-- {
			es = append(es, &raftpb.Entry{Id: g.id("e"), ParentId: g.id("node-"), SpiffeId: "spiffe://example.org/" + g.id("w")})
		}
		c.Op = &raftpb.Command_PutEntries{PutEntries: &raftpb.PutEntries{Entries: es}}
	case 23: // issue 16a: admission by a server-join secret
		srv := &raftpb.Server{NodeId: g.id("s"), JoinAttempt: g.id("att-")}
		a := auth()
		a.ServerId, a.Kind = srv.NodeId, raftpb.AuthorityKind_INTERMEDIATE
		c.Op = &raftpb.Command_AdmitServer{AdmitServer: &raftpb.AdmitServer{JoinSecretId: g.id("js-"), Server: srv, Intermediates: []*raftpb.Authority{a}}}
	case 26:
		op := &raftpb.BanNode{NodeId: g.id("node-"), Banned: g.pick(3) != 0}
		if op.Banned {
			op.Revocations = []*raftpb.Revocation{{IssuerId: g.id("auth-"), Serial: []byte(g.id("serial-")), NotAfterUnix: int64(g.pick(200))}}
		}
		c.Op = &raftpb.Command_BanNode{BanNode: op}
	case 27:
		c.Op = &raftpb.Command_EvictNode{EvictNode: &raftpb.EvictNode{NodeId: g.id("node-")}}
	case 28:
		c.Op = &raftpb.Command_TaintAuthority{TaintAuthority: &raftpb.TaintAuthority{Id: g.id("auth-")}}
	case 29:
		op := &raftpb.RevokeAuthority{Id: g.id("auth-")}
		if g.pick(2) == 0 {
			op.Revocation = &raftpb.Revocation{IssuerId: g.id("auth-"), Serial: []byte(g.id("serial-"))}
		}
		c.Op = &raftpb.Command_RevokeAuthority{RevokeAuthority: op}
	case 30: // issue 12
		c.Op = &raftpb.Command_PutIssuancePolicy{PutIssuancePolicy: &raftpb.PutIssuancePolicy{Keep: uint32(g.pick(4)),
			Policy: &raftpb.IssuancePolicy{Revision: uint64(g.pick(6)), Files: []*raftpb.PolicyFile{{Path: "p.rego", Content: []byte{byte(g.pick(3))}}}}}}
	case 31:
		c.Op = &raftpb.Command_PutOpaBundle{PutOpaBundle: &raftpb.PutOPABundle{Keep: uint32(g.pick(4)),
			Bundle: &raftpb.OPABundle{Name: g.id("b"), Revision: uint64(g.pick(6)), Bundle: []byte{byte(g.pick(3))}}}}
	case 32:
		c.Op = &raftpb.Command_PutOpaKey{PutOpaKey: &raftpb.PutOPAKey{Key: &raftpb.OPAKey{Kid: g.id("okid-"), PublicKey: []byte{byte(g.pick(2))}, SealedKey: []byte{1}}}}
	case 33:
		c.Op = &raftpb.Command_RequestAuthorityStep{RequestAuthorityStep: &raftpb.RequestAuthorityStep{Id: g.id("auth-"),
			Step: []string{StepPrepare, StepActivate, "bogus"}[g.pick(3)]}}
	case 34: // issue 13 roots
		a := auth()
		a.Kind, a.ServerId, a.SealedKey = raftpb.AuthorityKind_ROOT, "", []byte{1}
		if g.pick(4) != 0 {
			a.State = raftpb.AuthorityState_PREPARED
		}
		c.Op = &raftpb.Command_PrepareRoot{PrepareRoot: &raftpb.PrepareRoot{Root: a, SuccessorOf: g.id("auth-")}}
	case 35:
		c.Op = &raftpb.Command_ActivateRoot{ActivateRoot: &raftpb.ActivateRoot{Id: g.id("auth-")}}
	case 36:
		op := &raftpb.TaintJWTKey{Kid: g.id("kid-")}
		if g.pick(2) == 0 {
			op.Successor = &raftpb.JWTKey{Kid: g.id("kid-"), PublicKey: []byte{1}, SealedKey: []byte{1}, State: g.state(), NotAfterUnix: int64(g.pick(200))}
		}
		c.Op = &raftpb.Command_TaintJwtKey{TaintJwtKey: op}
	case 37:
		c.Op = &raftpb.Command_RevokeJwtKey{RevokeJwtKey: &raftpb.RevokeJWTKey{Kid: g.id("kid-")}}
	case 38: // issue 12 tokens
		c.Op = &raftpb.Command_PutBundleToken{PutBundleToken: &raftpb.PutBundleToken{Token: &raftpb.BundleToken{Id: g.id("bt-"), Name: g.id("n"),
			SecretSha256: make([]byte, 32), Bundles: []string{g.id("b")}, ExpiresUnixNano: int64(g.pick(3)) * g.now / 2}}}
	case 39:
		c.Op = &raftpb.Command_DeleteBundleToken{DeleteBundleToken: &raftpb.DeleteBundleToken{Id: g.id("bt-")}}
	}
	return c
}

// FuzzApply applies a sequence of well-formed commands of every type to
// three state machines, one command at a time, in batches, and across a
// snapshot and restore half-way: none may panic, and all must end with
// the same state (deterministic Apply). Seeds are in
// testdata/fuzz/FuzzApply.
func FuzzApply(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		g := &cmdGen{b: data, now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()}
		var logs []*raft.Log
		for i := uint64(1); len(g.b) > 0 && i <= 100; i++ {
			b, err := Encode(g.command())
			if err != nil {
				t.Fatal(err)
			}
			logs = append(logs, &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: b})
		}
		one, batched, restored := New(), New(), New()
		for i, l := range logs {
			one.Apply(l)
			if i == len(logs)/2 {
				if err := restored.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, one)))); err != nil {
					t.Fatalf("restore a snapshot of the state: %v", err)
				}
			}
			if i > len(logs)/2 {
				restored.Apply(l)
			}
		}
		for i := 0; i < len(logs); i += 7 {
			batched.ApplyBatch(logs[i:min(i+7, len(logs))])
		}
		h1, _ := one.StateHash()
		h2, _ := batched.StateHash()
		h3, _ := restored.StateHash()
		if h1 != h2 || (len(logs) > 1 && h1 != h3) {
			t.Fatalf("the same commands gave different states: one by one %x, in batches %x, across a restore %x", h1[:4], h2[:4], h3[:4])
		}
	})
}
