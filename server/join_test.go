package server

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// signalWriter is a log sink that closes seen when a line contains want.
type signalWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	seen chan struct{}
	once sync.Once
}

func (w *signalWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.want) {
		w.once.Do(func() { close(w.seen) })
	}
	return len(p), nil
}

// A server whose --join reaches a cluster that cannot admit it yet (its
// only member is down) waits and retries until the member is back, instead
// of exiting; past its join timeout it gives up with an error saying so.
func TestJoinWaitsForTheCluster(t *testing.T) {
	kek := newKEK(t)
	c1 := testConfig(t, "s1", kek)
	c1.Bootstrap, c1.TrustDomain = true, "example.org"
	s1 := mustStart(t, c1)
	waitBootstrapped(t, s1)
	bundle := pemBundle(t, s1.srv.TrustBundle())
	token := s1.token(TokenKindServer)
	raftAddr, apiAddr := s1.srv.RaftAddr(), s1.srv.APIAddr()
	s1.shutdown()

	// Past the join timeout: an error that says so.
	early := joinCfg(t, "s0", kek, s1, token, bundle)
	early.APIAddr, early.JoinTimeout = "127.0.0.1:0", 2*time.Second
	began := time.Now()
	if _, err := New(early); err == nil || !strings.Contains(err.Error(), "join timeout") {
		t.Errorf("join of a cluster that stays down: %v; want an error naming the join timeout", err)
	} else if took := time.Since(began); took > 10*time.Second {
		t.Errorf("gave up after %s, with a 2 s join timeout", took)
	}

	cfg := joinCfg(t, "s2", kek, s1, token, bundle)
	logs := &signalWriter{want: "cannot admit this server yet", seen: make(chan struct{})}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	joined := make(chan error, 1)
	var s2 *running
	go func() {
		r, err := start(t, cfg)
		s2 = r
		joined <- err
	}()
	select {
	case <-logs.seen:
	case err := <-joined:
		t.Fatalf("the join ended while the cluster was down: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the joining server neither retried nor ended")
	}
	// The member comes back on its addresses: the join completes.
	c1.Bootstrap, c1.RaftAddr, c1.APIAddr = false, raftAddr, apiAddr
	mustStart(t, c1)
	select {
	case err := <-joined:
		if err != nil {
			t.Fatalf("join after the member came back: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the join did not complete after the member came back")
	}
	waitReady(t, s2, 30*time.Second)
}

// A member the trust bundle does not vouch for is a refusal, not an
// outage: the join ends at once instead of retrying for its join timeout.
func TestJoinWithAForeignBundleEndsAtOnce(t *testing.T) {
	kek := newKEK(t)
	c1 := testConfig(t, "s1", kek)
	c1.Bootstrap, c1.TrustDomain = true, "example.org"
	s1 := mustStart(t, c1)
	waitBootstrapped(t, s1)
	other := startCluster(t, 1)[0] // another cluster of the same trust domain name
	foreign := pemBundle(t, other.srv.TrustBundle())
	began := time.Now()
	_, err := New(joinCfg(t, "s2", kek, s1, s1.token(TokenKindServer), foreign))
	if err == nil || !strings.Contains(err.Error(), "trust bundle") {
		t.Fatalf("join with another cluster's bundle: %v; want a refusal naming the trust bundle", err)
	}
	if took := time.Since(began); took > 10*time.Second {
		t.Errorf("the join was refused only after %s (join timeout %s)", took, DefaultJoinTimeout)
	}
}
