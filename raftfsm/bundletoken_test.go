package raftfsm

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/meshca/meshca/proto/raftpb"
)

func putToken(id, name string, expires int64) *raftpb.Command {
	return &raftpb.Command{Op: &raftpb.Command_PutBundleToken{PutBundleToken: &raftpb.PutBundleToken{Token: &raftpb.BundleToken{
		Id: id, Name: name, SecretSha256: bytes.Repeat([]byte{1}, 32), Bundles: []string{"authz"}, ExpiresUnixNano: expires}}}}
}

// Bundle tokens: an ID or a name taken is refused, a token without a hash
// is refused, revocation removes it, watchers wake, expired tokens are
// dropped when a new one is created, and all of it survives a snapshot.
func TestBundleTokens(t *testing.T) {
	f := New()
	w := f.Watch(ScopeBundleTokens)
	i := uint64(0)
	next := func() uint64 { i++; return i }
	if err := applyCmd(t, f, next(), putToken("t1", "opa-a", 0)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w:
	default:
		t.Fatal("the watcher of bundle tokens was not woken")
	}
	if err := applyCmd(t, f, next(), putToken("t1", "opa-b", 0)); !errors.Is(err, ErrAlreadyExists) {
		t.Fatalf("a taken ID: %v, want ALREADY_EXISTS", err)
	}
	if err := applyCmd(t, f, next(), putToken("t2", "opa-a", 0)); !errors.Is(err, ErrAlreadyExists) {
		t.Fatalf("a taken name: %v, want ALREADY_EXISTS", err)
	}
	bad := putToken("t3", "opa-c", 0)
	bad.GetPutBundleToken().Token.SecretSha256 = []byte("short")
	if err := applyCmd(t, f, next(), bad); err == nil {
		t.Fatal("a token without a 32-byte hash was stored")
	}
	// t4 expires at 100; a token created at 200 drops it.
	if err := applyCmd(t, f, next(), putToken("t4", "opa-d", 100)); err != nil {
		t.Fatal(err)
	}
	c := putToken("t5", "opa-e", 0)
	c.Header = &raftpb.Header{Proposer: "s1", TimeUnixNano: 200}
	if err := applyCmd(t, f, next(), c); err != nil {
		t.Fatal(err)
	}
	if f.Read().BundleToken("t4") != nil {
		t.Fatal("an expired token was kept when a new one was created")
	}
	if tok := f.Read().BundleTokenByName("opa-a"); tok == nil || tok.Id != "t1" {
		t.Fatalf("by name: %v", tok)
	}
	if err := applyCmd(t, f, next(), &raftpb.Command{Op: &raftpb.Command_DeleteBundleToken{DeleteBundleToken: &raftpb.DeleteBundleToken{Id: "t1"}}}); err != nil {
		t.Fatal(err)
	}
	if err := applyCmd(t, f, next(), &raftpb.Command{Op: &raftpb.Command_DeleteBundleToken{DeleteBundleToken: &raftpb.DeleteBundleToken{Id: "t1"}}}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoking twice: %v, want NOT_FOUND", err)
	}
	snap := snapshotBytes(t, f)
	g := New()
	if err := g.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatal(err)
	}
	toks := g.Read().BundleTokens()
	if len(toks) != 1 || toks[0].Id != "t5" || len(toks[0].SecretSha256) != 32 {
		t.Fatalf("restored tokens %v", toks)
	}
	if os.Getenv("MESHCA_WRITE_SEEDS") != "" { // writes the FuzzRestore seed with a token
		seed := "go test fuzz v1\n[]byte(" + strconv.Quote(string(snap)) + ")\n"
		if err := os.WriteFile(filepath.Join("testdata", "fuzz", "FuzzRestore", "bundle-token"), []byte(seed), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// MaxBundleTokens bounds the tokens held.
func TestBundleTokensBounded(t *testing.T) {
	f := New()
	for i := 1; i <= MaxBundleTokens; i++ {
		if err := applyCmd(t, f, uint64(i), putToken("t"+strconv.Itoa(i), "n"+strconv.Itoa(i), 0)); err != nil {
			t.Fatal(err)
		}
	}
	if err := applyCmd(t, f, MaxBundleTokens+1, putToken("x", "x", 0)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("token %d: %v, want INVALID", MaxBundleTokens+1, err)
	}
}
