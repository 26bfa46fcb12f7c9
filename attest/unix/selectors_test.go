package unix

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/meshca/meshca/attest"
)

func TestValidateSelectorValue(t *testing.T) {
	sum := strings.Repeat("0123456789abcdef", 4)
	for _, c := range []struct {
		name, value string
		inMsg       string // "" = valid
	}{
		{"ok/uid", "uid:1000", ""},
		{"ok/uid-0", "uid:0", ""},
		{"ok/gid-max", "gid:4294967294", ""},
		{"ok/user", "user:alice", ""},
		{"ok/user-with-dot-and-at", "user:alice.smith@ad.example.com", ""},
		{"ok/group-with-space", "group:domain users", ""},
		{"ok/path", "path:/usr/local/bin/api", ""},
		{"ok/path-with-space", "path:/opt/my app/bin/run", ""},
		{"ok/sha256", "sha256:" + sum, ""},
		{"fail/uid-letters", "uid:abc", "non-negative decimal"},
		{"fail/uid-trailing-letter", "uid:1000x", "non-negative decimal"},
		{"fail/gid-negative", "gid:-1", "non-negative decimal"},
		{"fail/uid-plus", "uid:+5", "non-negative decimal"},
		{"fail/uid-leading-zero", "uid:0100", "leading zeros"},
		{"fail/uid-too-large", "uid:4294967296", "at most 4294967294"},
		{"fail/uid-minus-one", "uid:4294967295", "at most 4294967294"},
		{"fail/uid-leading-space", "uid: 1000", "leading or trailing spaces"},
		{"fail/uid-trailing-space", "uid:1000 ", "leading or trailing spaces"},
		{"fail/uid-empty", "uid:", "empty"},
		{"fail/user-numeric", "user:1000", "unix:uid:1000"},
		{"fail/group-numeric", "group:50", "unix:gid:50"},
		{"fail/user-colon", "user:a:b", "no ':'"},
		{"fail/user-leading-space", "user: alice", "leading or trailing spaces"},
		{"fail/path-relative", "path:bin/app", "absolute"},
		{"fail/path-dotdot", "path:/usr/bin/../bin/app", "not clean (want /usr/bin/app)"},
		{"fail/path-double-slash", "path://usr/bin/app", "not clean"},
		{"fail/path-trailing-slash", "path:/usr/bin/", "not clean"},
		{"fail/path-root", "path:/", "directory"},
		{"fail/sha256-short", "sha256:zz", "64 hexadecimal digits"},
		{"fail/sha256-not-hex", "sha256:" + strings.Repeat("z", 64), "not a hexadecimal digit"},
		{"fail/sha256-uppercase", "sha256:" + strings.ToUpper(sum), "lowercase"},
		{"fail/unknown-key", "color:blue", `unknown key "color"`},
		{"fail/no-key", "1000", "unix:<key>:<value>"},
		{"fail/control", "path:/a\nb", "control character"},
		{"fail/empty", "", "empty value"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := ValidateSelectorValue(c.value)
			if c.inMsg == "" {
				if err != nil {
					t.Fatalf("ValidateSelectorValue(%q) = %v, want nil", c.value, err)
				}
				return
			}
			if !errors.Is(err, attest.ErrInvalidSelector) || !strings.Contains(err.Error(), c.inMsg) {
				t.Fatalf("ValidateSelectorValue(%q) = %v, want ErrInvalidSelector saying %q", c.value, err, c.inMsg)
			}
		})
	}
}

// What the attestor produces for a real process always passes the
// validator: an entry can always be written for it.
func TestSelectorsOfSelfAreValid(t *testing.T) {
	sels, err := New(Config{}).Attest(t.Context(), peerOf(t, int32(os.Getpid())))
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]bool{}
	for _, s := range sels {
		if err := ValidateSelectorValue(s.Value); err != nil {
			t.Errorf("the attestor produced %s, which the validator refuses: %v", s, err)
		}
		k, _, _ := strings.Cut(s.Value, ":")
		keys[k] = true
	}
	for _, k := range []string{"uid", "gid", "path", "sha256"} {
		if !keys[k] {
			t.Errorf("no %s selector for this process: %v", k, sels)
		}
	}
}

// FuzzValidateSelectorValue checks that validation never panics, fails
// only with ErrInvalidSelector, and accepts only values the attestor could
// produce: a known key, no surrounding spaces, and IDs that round-trip.
func FuzzValidateSelectorValue(f *testing.F) {
	for _, s := range []string{"uid:1000", "gid:0", "uid:01", "uid:-1", "user:alice", "path:/usr/bin/app", "path:bin/app", "sha256:zz", " uid:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, value string) {
		err := ValidateSelectorValue(value)
		if err != nil {
			if !errors.Is(err, attest.ErrInvalidSelector) {
				t.Fatalf("ValidateSelectorValue(%q) = %v, not ErrInvalidSelector", value, err)
			}
			return
		}
		key, v, _ := strings.Cut(value, ":")
		if v == "" || strings.TrimSpace(v) != v {
			t.Fatalf("ValidateSelectorValue(%q) accepted an empty or padded value", value)
		}
		switch key {
		case "uid", "gid":
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil || strconv.FormatUint(n, 10) != v {
				t.Fatalf("ValidateSelectorValue(%q) accepted an ID that does not round-trip", value)
			}
		case "path":
			if !strings.HasPrefix(v, "/") {
				t.Fatalf("ValidateSelectorValue(%q) accepted a relative path", value)
			}
		case "sha256":
			if len(v) != 64 || strings.ToLower(v) != v {
				t.Fatalf("ValidateSelectorValue(%q) accepted a bad digest", value)
			}
		case "user", "group":
		default:
			t.Fatalf("ValidateSelectorValue(%q) accepted unknown key %q", value, key)
		}
	})
}
