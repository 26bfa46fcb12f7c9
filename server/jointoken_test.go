package server

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

func TestCheckJoinToken(t *testing.T) {
	var raw [32]byte
	rand.Read(raw[:])
	good := base64.RawURLEncoding.EncodeToString(raw[:])
	for _, c := range []struct {
		name, token, inMsg string
	}{
		{"ok/token", good, ""},
		{"fail/empty", "", "this one is 0"},
		{"fail/truncated", good[:40], "this one is 40"},
		{"fail/too-long", good + "A", "this one is 44"},
		{"fail/newline", good + "\n", "newline"},
		{"fail/leading-space", " " + good[1:], "leading or trailing"},
		{"fail/std-base64", "+" + good[1:], "character 1 is not base64url"},
		{"fail/padding", good[:42] + "=", "character 43 is not base64url"},
		{"fail/last-char-bits", good[:42] + "B", "last character"},
		{"fail/table-line", "token  " + good[:36], "character 6 is not base64url"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := CheckJoinToken(c.token)
			if c.inMsg == "" {
				if err != nil {
					t.Fatalf("CheckJoinToken(good) = %v", err)
				}
				return
			}
			if !errors.Is(err, ErrMalformedJoinToken) || !strings.Contains(err.Error(), c.inMsg) {
				t.Fatalf("CheckJoinToken(%q) = %v, want ErrMalformedJoinToken saying %q", c.token, err, c.inMsg)
			}
			if len(c.token) > 8 && strings.Contains(err.Error(), strings.TrimSpace(c.token)) {
				t.Errorf("the error %q contains the token", err)
			}
		})
	}
}

// FuzzCheckJoinToken checks that CheckJoinToken never panics, accepts
// exactly the encodings of 32 bytes, and never repeats a token in its
// errors.
func FuzzCheckJoinToken(f *testing.F) {
	for _, s := range []string{"", "abc", strings.Repeat("A", 43), strings.Repeat("A", 42) + "B", strings.Repeat("_", 43), "token  x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, token string) {
		err := CheckJoinToken(token)
		b, derr := base64.RawURLEncoding.Strict().DecodeString(token)
		valid := derr == nil && len(b) == 32 && len(token) == JoinTokenLen
		if valid != (err == nil) {
			t.Fatalf("CheckJoinToken(%q) = %v, but a base64url decoding of 32 bytes is %v", token, err, valid)
		}
		if err != nil && !errors.Is(err, ErrMalformedJoinToken) {
			t.Fatalf("CheckJoinToken(%q) = %v, not ErrMalformedJoinToken", token, err)
		}
		if err != nil && len(token) >= 8 && strings.Contains(err.Error(), token) {
			t.Fatalf("CheckJoinToken(%q) error repeats the token", token)
		}
	})
}
