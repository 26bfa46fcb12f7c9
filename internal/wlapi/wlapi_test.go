package wlapi

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	_ "github.com/meshca/meshca/ca/stepcas" // the test CA's ECDSA hierarchy
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// fakeAPI is a Workload API server whose answers the test scripts: each
// FetchX509SVID call takes the next answer (the last one repeats), and
// records the request metadata it got.
type fakeAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer

	mu      sync.Mutex
	answers []answer
	calls   int
	md      []metadata.MD
}

type answer struct {
	resp *workload.X509SVIDResponse
	err  error
}

func (f *fakeAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream workload.SpiffeWorkloadAPI_FetchX509SVIDServer) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	f.mu.Lock()
	a := f.answers[min(f.calls, len(f.answers)-1)]
	f.calls++
	f.md = append(f.md, md)
	f.mu.Unlock()
	if a.err != nil {
		return a.err
	}
	if err := stream.Send(a.resp); err != nil {
		return err
	}
	<-stream.Context().Done() // a stream stays open, as an agent's does
	return nil
}

// requestMetadata returns the metadata of call i.
func (f *fakeAPI) requestMetadata(i int) metadata.MD {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.md[i]
}

func (f *fakeAPI) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// serve runs api on a Unix socket in a short temporary directory and
// returns the socket's path; the server stops with the test.
func serve(t *testing.T, api *fakeAPI) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "wlapi") // short: a Unix socket path is limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "agent.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(gs, api)
	done := make(chan struct{})
	go func() {
		defer close(done)
		gs.Serve(ln)
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-done
	})
	return socket
}

// testCA is a local CA of both profiles for example.org.
type testCA struct{ l *ca.LocalCA }

func newTestCA(t *testing.T) testCA {
	t.Helper()
	dir := t.TempDir()
	kek, err := ca.CreateKEKFile(filepath.Join(dir, "kek"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := ca.OpenLocal(ca.LocalConfig{Dir: dir, KEK: kek, TrustDomain: spiffeid.RequireTrustDomainFromString("example.org")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return testCA{l}
}

// svid issues an X509-SVID of profile for id, as an agent sends it.
func (c testCA) svid(t *testing.T, profile, id string) *workload.X509SVID {
	t.Helper()
	p, err := ca.ProfileByName(profile)
	if err != nil {
		t.Fatal(err)
	}
	key, err := p.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := p.CreateCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := c.l.Issuer(profile)
	if err != nil {
		t.Fatal(err)
	}
	s, err := iss.SignX509SVID(t.Context(), ca.X509SVIDParams{CSR: csr, SPIFFEID: id})
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := p.MarshalPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	root, err := c.l.Root(profile)
	if err != nil {
		t.Fatal(err)
	}
	return &workload.X509SVID{SpiffeId: id, X509Svid: bytes.Join(s.Certificates, nil), X509SvidKey: keyDER, Bundle: root.Certificate().Raw}
}

func response(svids ...*workload.X509SVID) answer {
	return answer{resp: &workload.X509SVIDResponse{Svids: svids}}
}

func newClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func fetchCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// The SVIDs of both profiles come back checked and in the agent's order,
// and the request carries the security header and the profiles asked for.
func TestFetchX509SVIDs(t *testing.T) {
	t.Parallel()
	c := newTestCA(t)
	web, gm := c.svid(t, ca.ProfileECDSA, "spiffe://example.org/web"), c.svid(t, ca.ProfileSM2, "spiffe://example.org/gm")
	api := &fakeAPI{answers: []answer{response(web, gm)}}
	cl := newClient(t, Config{Socket: serve(t, api), Profiles: []string{ca.ProfileECDSA, ca.ProfileSM2}})
	svids, err := cl.FetchX509SVIDs(fetchCtx(t, 20*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(svids) != 2 || svids[0].ID != web.SpiffeId || svids[1].ID != gm.SpiffeId {
		t.Fatalf("got %d SVIDs, want web then gm", len(svids))
	}
	for i, p := range []string{ca.ProfileECDSA, ca.ProfileSM2} {
		s := svids[i]
		if s.Leaf.Profile != p || len(s.Chain) != 2 || len(s.Roots) != 1 || !bytes.Equal(s.KeyDER, []*workload.X509SVID{web, gm}[i].X509SvidKey) {
			t.Errorf("SVID %d: profile %s, %d certificates, %d roots", i, s.Leaf.Profile, len(s.Chain), len(s.Roots))
		}
	}
	md := api.requestMetadata(0)
	if v := md.Get(securityHeader); len(v) != 1 || v[0] != "true" {
		t.Errorf("security header %q, want true", v)
	}
	if v := md.Get(ProfilesMetadataKey); len(v) != 1 || v[0] != "ecdsa,sm2" {
		t.Errorf("%s = %q, want ecdsa,sm2", ProfilesMetadataKey, v)
	}

	// Without profiles, the client names none: it is a standard client.
	api2 := &fakeAPI{answers: []answer{response(web)}}
	if _, err := newClient(t, Config{Socket: serve(t, api2)}).FetchX509SVIDs(fetchCtx(t, 20*time.Second)); err != nil {
		t.Fatal(err)
	}
	if v := api2.requestMetadata(0).Get(ProfilesMetadataKey); len(v) != 0 {
		t.Errorf("a client without profiles sent %s = %q", ProfilesMetadataKey, v)
	}
}

// While the agent is unavailable or has no SVID for the caller, Fetch
// retries; another refusal is returned at once, with the agent's status.
func TestFetchRetries(t *testing.T) {
	t.Parallel()
	c := newTestCA(t)
	web := c.svid(t, ca.ProfileECDSA, "spiffe://example.org/web")
	unavailable := answer{err: status.Error(codes.Unavailable, "no server yet")}
	denied := answer{err: status.Error(codes.PermissionDenied, "no identity issued")}
	for _, tc := range []struct {
		name    string
		answers []answer
		code    codes.Code // of the error; OK for success
		calls   int        // at least
	}{
		{"ok/after-unavailable-and-denied", []answer{unavailable, denied, response(), response(web)}, codes.OK, 4},
		{"fail/invalid-argument", []answer{{err: status.Error(codes.InvalidArgument, "bad profiles")}, response(web)}, codes.InvalidArgument, 1},
		{"fail/denied-until-the-deadline", []answer{denied}, codes.PermissionDenied, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			api := &fakeAPI{answers: tc.answers}
			cl := newClient(t, Config{Socket: serve(t, api)})
			wait := 20 * time.Second
			if tc.code == codes.PermissionDenied {
				wait = 2 * time.Second // the deadline is the point
			}
			svids, err := cl.FetchX509SVIDs(fetchCtx(t, wait))
			if got := status.Code(err); got != tc.code {
				t.Fatalf("FetchX509SVIDs = %d SVIDs, %v; want code %s", len(svids), err, tc.code)
			}
			if tc.code == codes.OK && (len(svids) != 1 || svids[0].ID != web.SpiffeId) {
				t.Errorf("got %d SVIDs, want web's", len(svids))
			}
			if n := api.callCount(); n < tc.calls || (tc.code == codes.InvalidArgument && n != 1) {
				t.Errorf("%d calls, want %d", n, tc.calls)
			}
		})
	}
}

// A response whose SVIDs do not check out is an error naming what is wrong.
func TestFetchRefusesBadSVIDs(t *testing.T) {
	t.Parallel()
	c := newTestCA(t)
	good := func() *workload.X509SVID { return c.svid(t, ca.ProfileECDSA, "spiffe://example.org/web") }
	other := good()
	for _, tc := range []struct {
		name string
		edit func(s *workload.X509SVID)
		want string
	}{
		{"fail/other-id", func(s *workload.X509SVID) { s.SpiffeId = "spiffe://example.org/other" }, "the leaf names"},
		{"fail/other-key", func(s *workload.X509SVID) { s.X509SvidKey = other.X509SvidKey }, "not the leaf's"},
		{"fail/no-key", func(s *workload.X509SVID) { s.X509SvidKey = nil }, "private key"},
		{"fail/no-chain", func(s *workload.X509SVID) { s.X509Svid = nil }, "certificate chain: empty"},
		{"fail/garbage-chain", func(s *workload.X509SVID) { s.X509Svid = []byte{0x30, 0x03, 1} }, "certificate chain"},
		{"fail/not-a-certificate", func(s *workload.X509SVID) { s.X509Svid = []byte{0x30, 0x00} }, "leaf"},
		{"fail/no-bundle", func(s *workload.X509SVID) { s.Bundle = nil }, "trust bundle: empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := good()
			tc.edit(s)
			if _, err := ParseX509SVID(s); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ParseX509SVID = %v, want an error saying %q", err, tc.want)
			}
			cl := newClient(t, Config{Socket: serve(t, &fakeAPI{answers: []answer{response(s)}})})
			if _, err := cl.FetchX509SVIDs(fetchCtx(t, 20*time.Second)); err == nil || !strings.Contains(err.Error(), "X509-SVID 0 from the Workload API") {
				t.Errorf("FetchX509SVIDs = %v, want the bad SVID refused", err)
			}
		})
	}
}

func TestCheckSocket(t *testing.T) {
	t.Parallel()
	live := serve(t, &fakeAPI{answers: []answer{response()}})
	dir := t.TempDir()
	stale := filepath.Join(filepath.Dir(live), "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, socket string
		want         error
	}{
		{"ok/live", live, nil},
		{"fail/missing", filepath.Join(dir, "missing.sock"), ErrNoSocket},
		{"fail/file", file, ErrNotSocket},
		{"fail/stale", stale, ErrNotListening},
	} {
		err := CheckSocket(tc.socket)
		if tc.want == nil && err != nil || tc.want != nil && (!errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.socket)) {
			t.Errorf("%s: CheckSocket(%s) = %v, want %v", tc.name, tc.socket, err, tc.want)
		}
	}
}

func TestPick(t *testing.T) {
	t.Parallel()
	svids := []*SVID{{ID: "a"}, {ID: "b"}, {ID: "c"}}
	ids := func(s []*SVID) []string {
		var out []string
		for _, v := range s {
			out = append(out, v.ID)
		}
		return out
	}
	if got, ok := Pick(svids, "b"); !ok || !slices.Equal(ids(got), []string{"b", "a", "c"}) {
		t.Errorf("Pick(b) = %v, %v", ids(got), ok)
	}
	if got, ok := Pick(svids, "a"); !ok || !slices.Equal(ids(got), []string{"a", "b", "c"}) {
		t.Errorf("Pick(a) = %v, %v", ids(got), ok)
	}
	if _, ok := Pick(svids, "d"); ok {
		t.Error("Pick(d) found an SVID")
	}
	if !slices.Equal(ids(svids), []string{"a", "b", "c"}) {
		t.Errorf("Pick changed its argument: %v", ids(svids))
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	t.Parallel()
	for _, cfg := range []Config{{}, {Socket: "/s", Profiles: []string{"rsa"}}} {
		if c, err := New(cfg); err == nil {
			c.Close()
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
}

func TestSplitDER(t *testing.T) {
	t.Parallel()
	c := newTestCA(t)
	s := c.svid(t, ca.ProfileSM2, "spiffe://example.org/gm")
	chain, err := SplitDER(s.X509Svid)
	if err != nil || len(chain) != 2 || !bytes.Equal(bytes.Join(chain, nil), s.X509Svid) {
		t.Fatalf("SplitDER = %d certificates, %v", len(chain), err)
	}
	if leaf, err := ParseCertificate(chain[0]); err != nil || leaf.Profile != ca.ProfileSM2 {
		t.Errorf("ParseCertificate(SM2 leaf) = %v, %v", leaf, err)
	}
	if _, err := SplitDER([]byte{0x30, 0x05, 0}); err == nil {
		t.Error("SplitDER accepted a truncated certificate")
	}
}
