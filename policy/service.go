package policy

import (
	"encoding/hex"
	"errors"
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
	// Authorize, if set, admits a request for bundle name, returning who
	// asks (for the audit trail), or refuses it: an *AuthError says 401 or
	// 403, any other error is a 403. A long poll is authorized again when
	// it wakes, so a credential revoked meanwhile gets nothing new.
	Authorize func(r *http.Request, name string) (string, error)
	// Audit, if set, is told of each request's outcome: refused, a bundle
	// served, or not modified.
	Audit func(r *http.Request, f Fetch)
	// Clock times long polls. Default: the real clock.
	Clock clockwork.Clock
	// MaxWait bounds a long poll. Default: 5 minutes.
	MaxWait time.Duration
}

// Fetch is the outcome of one bundle service request.
type Fetch struct {
	// Who asked, as Authorize named them ("" when refused before).
	Who  string
	Name string
	// Revision served, or held (304); 0 when refused.
	Revision uint64
	// Status is the HTTP status answered.
	Status int
	// Err is why the request was refused (Status 401, 403), else nil.
	Err error
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
		who, ok := s.authorize(w, r, name)
		if !ok {
			return
		}
		b, changed := s.Source.Bundle(name)
		if b == nil {
			if !longPoll || wait <= 0 {
				http.Error(w, "no bundle "+name, http.StatusNotFound)
				return
			}
		} else {
			if !ETagMatches(r.Header.Values("If-None-Match"), b.ETag()) {
				s.send(w, r, who, name, b)
				return
			}
			if !longPoll || wait <= 0 {
				s.notModified(w, r, who, name, b)
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
		s.notModified(w, r, who, name, b)
		return
	}
}

// authorize asks Authorize; a refusal is answered (401 with a Bearer
// challenge, or 403) and audited.
func (s *BundleService) authorize(w http.ResponseWriter, r *http.Request, name string) (string, bool) {
	if s.Authorize == nil {
		return "", true
	}
	who, err := s.Authorize(r, name)
	if err == nil {
		return who, true
	}
	code := http.StatusForbidden
	var ae *AuthError
	if errors.As(err, &ae) {
		code = ae.Status
	}
	if code == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="meshca", error="invalid_token"`)
	}
	if s.Audit != nil {
		s.Audit(r, Fetch{Who: who, Name: name, Status: code, Err: err})
	}
	http.Error(w, http.StatusText(code)+": "+err.Error(), code)
	return "", false
}

func (s *BundleService) send(w http.ResponseWriter, r *http.Request, who, name string, b *Served) {
	h := w.Header()
	h.Set("Content-Type", BundleContentType)
	h.Set("ETag", b.ETag())
	h.Set("Content-Length", strconv.Itoa(len(b.Bytes)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write(b.Bytes)
	}
	if s.Audit != nil {
		s.Audit(r, Fetch{Who: who, Name: name, Revision: b.Revision, Status: http.StatusOK})
	}
}

func (s *BundleService) notModified(w http.ResponseWriter, r *http.Request, who, name string, b *Served) {
	w.Header().Set("Content-Type", BundleContentType)
	w.Header().Set("ETag", b.ETag())
	w.WriteHeader(http.StatusNotModified)
	if s.Audit != nil {
		s.Audit(r, Fetch{Who: who, Name: name, Revision: b.Revision, Status: http.StatusNotModified})
	}
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
