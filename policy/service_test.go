package policy

import (
	"context"
	"crypto/sha256"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

// memSource is a BundleSource whose bundle a test replaces.
type memSource struct {
	mu      sync.Mutex
	cur     *Served
	changed chan struct{}
}

func newMemSource(content string) *memSource {
	m := &memSource{changed: make(chan struct{})}
	m.set(1, content)
	return m
}

func (m *memSource) set(rev uint64, content string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	sum := sha256.Sum256([]byte(content))
	m.cur = &Served{Revision: rev, Bytes: []byte(content), SHA256: sum[:]}
	close(m.changed)
	m.changed = make(chan struct{})
}

func (m *memSource) Bundle(name string) (*Served, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if name != "authz" {
		return nil, m.changed
	}
	return m.cur, m.changed
}

func TestBundleService(t *testing.T) {
	src := newMemSource("one")
	clock := clockwork.NewFakeClock()
	var refused []string
	svc := &BundleService{Source: src, Clock: clock, MaxWait: time.Minute,
		Authorize: func(r *http.Request, name string) (string, error) {
			switch r.Header.Get("Authorization") {
			case "Bearer ok":
				return "tester", nil
			case "Bearer other":
				return "other", Forbidden("not %s", name)
			case "":
				return "", Unauthenticated("no token")
			}
			return "", errors.New("plain error")
		},
		Audit: func(_ *http.Request, f Fetch) {
			if f.Err != nil {
				refused = append(refused, f.Name)
			}
		}}
	do := func(method, path string, h map[string]string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, path, nil)
		req.Header.Set("Authorization", "Bearer ok")
		for k, v := range h {
			req.Header.Set(k, v)
		}
		w := httptest.NewRecorder()
		svc.ServeHTTP(w, req)
		return w
	}
	w := do("GET", "/v1/bundles/authz", nil)
	etag := w.Header().Get("ETag")
	if w.Code != 200 || w.Body.String() != "one" || etag == "" || w.Header().Get("Content-Type") != BundleContentType {
		t.Fatalf("GET: %d %q %q %q", w.Code, w.Body.String(), etag, w.Header().Get("Content-Type"))
	}
	if w := do("GET", "/v1/bundles/authz.tar.gz", map[string]string{"If-None-Match": `"x", ` + etag}); w.Code != 304 {
		t.Fatalf("If-None-Match listing the ETag: %d", w.Code)
	}
	if w := do("GET", "/v1/bundles/authz", map[string]string{"If-None-Match": `"x"`}); w.Code != 200 {
		t.Fatalf("If-None-Match with another ETag: %d", w.Code)
	}
	if w := do("GET", "/v1/bundles/other", nil); w.Code != 404 {
		t.Fatalf("an unknown bundle: %d", w.Code)
	}
	if w := do("POST", "/v1/bundles/authz", nil); w.Code != 405 {
		t.Fatalf("POST: %d", w.Code)
	}
	for i, c := range []struct {
		auth   string
		status int
	}{{"", 401}, {"Bearer other", 403}, {"Bearer bogus", 403}} {
		req := httptest.NewRequest("GET", "/v1/bundles/authz", nil)
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		rec := httptest.NewRecorder()
		svc.ServeHTTP(rec, req)
		if rec.Code != c.status || len(refused) != i+1 || rec.Body.String() == "one" {
			t.Fatalf("Authorization %q: %d (want %d), refusals audited %v", c.auth, rec.Code, c.status, refused)
		}
		if challenge := rec.Header().Get("WWW-Authenticate"); (c.status == 401) != (challenge != "") {
			t.Fatalf("Authorization %q: WWW-Authenticate %q", c.auth, challenge)
		}
	}

	// A long poll ends with 304 when its wait is over (on the clock)...
	done := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		done <- do("GET", "/v1/bundles/authz", map[string]string{"If-None-Match": etag, "Prefer": "modes=snapshot,delta;wait=30"})
	}()
	if err := clock.BlockUntilContext(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	clock.Advance(30 * time.Second)
	if w := <-done; w.Code != 304 {
		t.Fatalf("long poll after its wait: %d", w.Code)
	}
	// ...and with the new revision when one comes first.
	go func() {
		done <- do("GET", "/v1/bundles/authz", map[string]string{"If-None-Match": etag, "Prefer": "modes=snapshot,delta;wait=30"})
	}()
	if err := clock.BlockUntilContext(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	src.set(2, "two")
	if w := <-done; w.Code != 200 || w.Body.String() != "two" {
		t.Fatalf("long poll across a new revision: %d %q", w.Code, w.Body.String())
	}
}

func TestPreferWait(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"modes=snapshot,delta;wait=60": time.Minute, "wait=0": 0, "modes=snapshot": -1, "wait=x": -1, "wait=-1": -1,
	} {
		got, ok := PreferWait([]string{in})
		if (want < 0) == ok || (ok && got != want) {
			t.Errorf("PreferWait(%q) = %v, %v; want %v", in, got, ok, want)
		}
	}
}

// A long poll is authorized again when a new revision wakes it: a
// credential revoked while it waited gets 401, not the new revision.
func TestBundleServiceLongPollReauthorizes(t *testing.T) {
	src := newMemSource("one")
	clock := clockwork.NewFakeClock()
	var mu sync.Mutex
	revoked := false
	svc := &BundleService{Source: src, Clock: clock,
		Authorize: func(r *http.Request, _ string) (string, error) {
			mu.Lock()
			defer mu.Unlock()
			if revoked {
				return "", Unauthenticated("revoked")
			}
			return "tester", nil
		}}
	etag := (&Served{SHA256: src.cur.SHA256}).ETag()
	done := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		req := httptest.NewRequest("GET", "/v1/bundles/authz", nil)
		req.Header.Set("If-None-Match", etag)
		req.Header.Set("Prefer", "modes=snapshot,delta;wait=30")
		w := httptest.NewRecorder()
		svc.ServeHTTP(w, req)
		done <- w
	}()
	if err := clock.BlockUntilContext(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	revoked = true
	mu.Unlock()
	src.set(2, "two")
	if w := <-done; w.Code != 401 || w.Body.String() == "two" {
		t.Fatalf("a long poll whose credential was revoked: %d %q", w.Code, w.Body.String())
	}
}
