package policy

import (
	"encoding/hex"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jonboulle/clockwork"
)

// BundleContentType is the media type of OPA bundles; a long-polling
// bundle server must answer with it, or OPA falls back to periodic polls.
const BundleContentType = "application/vnd.openpolicyagent.bundles"

// Served is one revision of a bundle as a bundle service serves it.
type Served struct {
	Revision uint64
	Bytes    []byte
	// SHA256 of Bytes; its hex, quoted, is the ETag.
	SHA256 []byte
}

// ETag is the entity tag of the revision.
func (s *Served) ETag() string { return `"` + hex.EncodeToString(s.SHA256) + `"` }

// BundleSource is where a BundleService finds bundles.
type BundleSource interface {
	// Bundle returns the latest revision of a bundle (nil: none) and a
	// channel closed when a newer one may exist.
	Bundle(name string) (*Served, <-chan struct{})
}

// BundleService serves OPA's bundle service API: GET {prefix}/bundles/NAME
// (or NAME.tar.gz) returns the latest revision with its ETag; a request
// whose If-None-Match lists the current ETag (one of several values, or
// "*") gets 304, after waiting for a new revision up to the wait its
// Prefer header asks (modes=snapshot,delta;wait=N), at most MaxWait.
type BundleService struct {
	Source BundleSource
	// Authorize admits a request, returning who asks (audit), or refuses
	// it with an error (403).
	Authorize func(r *http.Request) (string, error)
	// Audit, if set, is told of each refusal and each bundle served.
	Audit func(r *http.Request, who, name string, rev uint64, err error)
	// Clock times long polls. Default: the real clock.
	Clock clockwork.Clock
	// MaxWait bounds a long poll. Default: 5 minutes.
	MaxWait time.Duration
}

// DefaultMaxWait is the longest long poll a BundleService holds by default.
const DefaultMaxWait = 5 * time.Minute

// ServeHTTP implements http.Handler.
func (s *BundleService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	i := strings.LastIndex(r.URL.Path, "/bundles/")
	if i < 0 {
		http.NotFound(w, r)
		return
	}
	name := strings.TrimSuffix(r.URL.Path[i+len("/bundles/"):], ".tar.gz")
	if CheckName(name) != nil {
		http.NotFound(w, r)
		return
	}
	who := ""
	if s.Authorize != nil {
		var err error
		if who, err = s.Authorize(r); err != nil {
			if s.Audit != nil {
				s.Audit(r, who, name, 0, err)
			}
			http.Error(w, "forbidden: "+err.Error(), http.StatusForbidden)
			return
		}
	}
	wait, longPoll := PreferWait(r.Header.Values("Prefer"))
	maxWait := s.MaxWait
	if maxWait <= 0 {
		maxWait = DefaultMaxWait
	}
	wait = min(wait, maxWait)
	clock := s.Clock
	if clock == nil {
		clock = clockwork.NewRealClock()
	}
	var timer clockwork.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		b, changed := s.Source.Bundle(name)
		if b == nil {
			if !longPoll || wait <= 0 {
				http.Error(w, "no bundle "+name, http.StatusNotFound)
				return
			}
		} else {
			if !ETagMatches(r.Header.Values("If-None-Match"), b.ETag()) {
				s.send(w, r, who, name, b, longPoll)
				return
			}
			if !longPoll || wait <= 0 {
				s.notModified(w, b, longPoll)
				return
			}
		}
		if timer == nil {
			timer = clock.NewTimer(wait)
		}
		select {
		case <-changed:
			continue
		case <-timer.Chan():
		case <-r.Context().Done():
			return
		}
		if b == nil {
			http.Error(w, "no bundle "+name, http.StatusNotFound)
			return
		}
		s.notModified(w, b, longPoll)
		return
	}
}

func (s *BundleService) send(w http.ResponseWriter, r *http.Request, who, name string, b *Served, _ bool) {
	h := w.Header()
	h.Set("Content-Type", BundleContentType)
	h.Set("ETag", b.ETag())
	h.Set("Content-Length", strconv.Itoa(len(b.Bytes)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write(b.Bytes)
	}
	if s.Audit != nil {
		s.Audit(r, who, name, b.Revision, nil)
	}
}

func (s *BundleService) notModified(w http.ResponseWriter, b *Served, _ bool) {
	w.Header().Set("Content-Type", BundleContentType)
	w.Header().Set("ETag", b.ETag())
	w.WriteHeader(http.StatusNotModified)
}

// ETagMatches reports whether If-None-Match header values (each a
// comma-separated list of entity tags, weak or strong, or "*") list etag.
func ETagMatches(values []string, etag string) bool {
	for _, v := range values {
		for _, t := range strings.Split(v, ",") {
			t = strings.TrimSpace(t)
			t = strings.TrimPrefix(t, "W/")
			if t == "*" || t == etag {
				return true
			}
		}
	}
	return false
}

// PreferWait reads the long-poll wait OPA asks for in its Prefer header
// (modes=snapshot,delta;wait=N, seconds); ok is false if it asks none.
func PreferWait(values []string) (time.Duration, bool) {
	for _, v := range values {
		for _, part := range strings.FieldsFunc(v, func(r rune) bool { return r == ';' || r == ',' }) {
			k, val, ok := strings.Cut(strings.TrimSpace(part), "=")
			if !ok || !strings.EqualFold(strings.TrimSpace(k), "wait") {
				continue
			}
			n, err := strconv.ParseInt(strings.TrimSpace(val), 10, 64)
			if err != nil || n < 0 {
				return 0, false
			}
			if n > math.MaxInt64/int64(time.Second) {
				n = math.MaxInt64 / int64(time.Second)
			}
			return time.Duration(n) * time.Second, true
		}
	}
	return 0, false
}
