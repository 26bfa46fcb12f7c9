package policy

import (
	"bytes"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
)

func TestBundleTokens(t *testing.T) {
	id, tok, sum, err := NewBundleToken(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok, BundleTokenPrefix+id+".") || len(id) != 16 {
		t.Fatalf("token %q, id %q", tok, id)
	}
	gotID, gotSum, err := ParseBundleToken(tok)
	if err != nil || gotID != id || !TokenHashEqual(gotSum, sum) {
		t.Fatalf("ParseBundleToken(%q) = %q, %x, %v; want %q, %x", tok, gotID, gotSum, err, id, sum)
	}
	_, _, other, _ := NewBundleToken(rand.Reader)
	if TokenHashEqual(other, sum) || TokenHashEqual(nil, nil) {
		t.Fatal("TokenHashEqual matched different or empty hashes")
	}
	for _, bad := range []string{"", "mbt.", tok + "x", tok[:len(tok)-1], strings.Replace(tok, "mbt.", "mbx.", 1),
		strings.ToUpper(tok[:20]) + tok[20:], BundleTokenPrefix + "zzzzzzzzzzzzzzzz." + tok[21:], tok[:20] + "+" + tok[21:]} {
		if _, _, err := ParseBundleToken(bad); !errors.Is(err, ErrMalformedToken) {
			t.Errorf("ParseBundleToken(%q) = %v, want ErrMalformedToken", bad, err)
		}
	}
	for in, want := range map[string]string{"Bearer abc": "abc", "bearer  abc ": "abc", "Basic abc": "", "Bearer": "", "Bearer a b": ""} {
		got, ok := BearerToken(in)
		if ok != (want != "") || got != want && ok {
			t.Errorf("BearerToken(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	if _, _, _, err := NewBundleToken(bytes.NewReader(nil)); err == nil {
		t.Fatal("a token drawn from an empty reader")
	}
}
