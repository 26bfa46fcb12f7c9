package sdsclient_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/meshca/meshca/sds"
	"github.com/meshca/meshca/sds/sdsclient"
	"google.golang.org/grpc"
)

// mutableSource grants "blob" with whatever content is current.
type mutableSource struct{ cur *atomic.Pointer[sds.Resource] }

func (s mutableSource) Resolve(_ context.Context, name string) (sds.Result, error) {
	if name == "blob" {
		return sds.Grant(s.cur.Load(), "blob"), nil
	}
	return sds.Refuse("not this workload's", "blob"), nil
}

func (s mutableSource) Names(context.Context) ([]string, []string, error) {
	return []string{"blob"}, []string{"blob"}, nil
}

func blob(t *testing.T, content, version string) *sds.Resource {
	t.Helper()
	r, err := sds.NewResource(&tlsv3.Secret{Name: "blob", Type: &tlsv3.Secret_GenericSecret{GenericSecret: &tlsv3.GenericSecret{
		Secret: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: []byte(content)}}}}}, version)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// sdsServer is a real sds.Server on a Unix socket that can be stopped and
// started again on the same path (an agent restart).
type sdsServer struct {
	t      *testing.T
	socket string
	srv    *sds.Server
	reqs   chan sds.RequestEvent
	gs     *grpc.Server
	done   chan struct{}
}

func newSDSServer(t *testing.T, cur *atomic.Pointer[sds.Resource]) *sdsServer {
	dir, err := os.MkdirTemp("", "sdsw")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &sdsServer{t: t, socket: filepath.Join(dir, "s.sock"), reqs: make(chan sds.RequestEvent, 64)}
	if s.srv, err = sds.New(sds.Config{
		Secrets:   func(context.Context, *corev3.Node) (sds.Source, error) { return mutableSource{cur}, nil },
		OnRequest: func(_ context.Context, e sds.RequestEvent) { s.reqs <- e },
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.srv.Close)
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *sdsServer) start() {
	os.Remove(s.socket)
	lis, err := net.Listen("unix", s.socket)
	if err != nil {
		s.t.Fatal(err)
	}
	s.gs, s.done = grpc.NewServer(), make(chan struct{})
	s.srv.Register(s.gs)
	go func(gs *grpc.Server, done chan struct{}) { defer close(done); _ = gs.Serve(lis) }(s.gs, s.done)
}

func (s *sdsServer) stop() {
	if s.gs != nil {
		s.gs.Stop()
		<-s.done
		s.gs = nil
	}
}

// next returns the next request the server handled of one of the kinds.
func (s *sdsServer) next(ctx context.Context, kinds ...sds.RequestKind) sds.RequestEvent {
	s.t.Helper()
	for {
		select {
		case e := <-s.reqs:
			for _, k := range kinds {
				if e.Kind == k {
					return e
				}
			}
		case <-ctx.Done():
			s.t.Fatalf("no %v request: %v", kinds, ctx.Err())
		}
	}
}

// TestWatcherACKsNACKsAndReconnects: a watcher applies and ACKs each
// version, NACKs a secret its Apply refuses (keeping the last good one,
// with the last accepted version), NACKs a response that lacks the secret
// without calling Apply, and reconnects after the server restarts.
func TestWatcherACKsNACKsAndReconnects(t *testing.T) {
	var cur atomic.Pointer[sds.Resource]
	cur.Store(blob(t, "one", "v1"))
	s := newSDSServer(t, &cur)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	c, err := sdsclient.Dial(s.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var mu sync.Mutex
	var applied []string
	got := make(chan string, 16)
	w, err := c.Watch(sdsclient.WatchConfig{Name: "blob", MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		Apply: func(_ context.Context, version string, sec *tlsv3.Secret) error {
			content := string(sec.GetGenericSecret().GetSecret().GetInlineBytes())
			got <- content
			if content == "bad" {
				return errors.New("does not parse")
			}
			mu.Lock()
			applied = append(applied, content)
			mu.Unlock()
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	recv := func(want string) {
		t.Helper()
		select {
		case g := <-got:
			if g != want {
				t.Fatalf("applied %q, want %q", g, want)
			}
		case <-ctx.Done():
			t.Fatalf("no %q applied", want)
		}
	}
	s.next(ctx, sds.RequestInitial)
	recv("one")
	s.next(ctx, sds.RequestACK)

	cur.Store(blob(t, "bad", "v2"))
	s.srv.Notify("blob")
	recv("bad")
	if e := s.next(ctx, sds.RequestNACK); e.Error != "does not parse" {
		t.Fatalf("NACK error %q", e.Error)
	}

	cur.Store(blob(t, "two", "v3"))
	s.srv.Notify("blob")
	recv("two")
	s.next(ctx, sds.RequestACK)

	// The agent restarts: the watcher subscribes again and gets the
	// current content.
	s.stop()
	cur.Store(blob(t, "three", "v4"))
	s.start()
	s.next(ctx, sds.RequestInitial)
	recv("three")
	s.next(ctx, sds.RequestACK)

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(applied) != 3 || applied[0] != "one" || applied[1] != "two" || applied[2] != "three" {
		t.Fatalf("applied %q", applied)
	}
}

// A refused name gets a response without the secret: NACKed, Apply not
// called.
func TestWatcherNACKsAMissingSecret(t *testing.T) {
	var cur atomic.Pointer[sds.Resource]
	cur.Store(blob(t, "one", "v1"))
	s := newSDSServer(t, &cur)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c, err := sdsclient.Dial(s.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w, err := c.Watch(sdsclient.WatchConfig{Name: "other", Apply: func(context.Context, string, *tlsv3.Secret) error {
		t.Error("Apply called for a refused name")
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	if e := s.next(ctx, sds.RequestNACK); e.Error != sdsclient.ErrMissingSecret.Error() {
		t.Fatalf("NACK error %q", e.Error)
	}
	cancel()
	<-done
}
