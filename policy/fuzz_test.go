package policy

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// FuzzCompile feeds arbitrary Rego and data.json to the issuance compiler
// and the bundle builder: no panic, a refusal is an *InvalidError, and an
// issuance policy that compiles decides a sample input as it would with
// OPA's own cache of virtual documents.
// Seeds are in testdata/fuzz/FuzzCompile.
func FuzzCompile(f *testing.F) {
	f.Add("package meshca.issuance\n\nallow if input.entries.allow\n", `{"a": 1}`)
	f.Add("package authz\n\nallow if input.user in data.users\n", `{"users": ["x"]}`)
	f.Add("package meshca.issuance\nallow if {", `[1]`)
	key := testKey(f)
	f.Fuzz(func(t *testing.T, rego, data string) {
		files := []File{{Path: "p.rego", Content: []byte(rego)}, {Path: "data.json", Content: []byte(data)}}
		p, err := CompileIssuance(context.Background(), 1, files)
		if err != nil {
			var ie *InvalidError
			if !errors.As(err, &ie) {
				t.Fatalf("CompileIssuance: %T %v, want an *InvalidError", err, err)
			}
		}
		if p != nil && p.deterministic {
			// A policy that compiles decides as with OPA's own cache of
			// virtual documents (bounded: a policy may loop for long).
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			p.CacheDecisions(0)
			in := workloadInput("payments")
			got, gotErr := p.Decide(ctx, in)
			want, wantErr := decideWithOPAsCache(ctx, p, in)
			if ctx.Err() == nil && ((gotErr != nil) != (wantErr != nil) || !reflect.DeepEqual(got, want)) {
				t.Fatalf("decided %+v (%v), with OPA's cache %+v (%v)", got, gotErr, want, wantErr)
			}
		}
		if _, err := Build(files, BuildOptions{Revision: 1, Key: key, KeyID: "k"}); err != nil {
			var ie *InvalidError
			if !errors.As(err, &ie) && !strings.Contains(err.Error(), "policy:") {
				t.Fatalf("Build: %T %v", err, err)
			}
		}
	})
}

// FuzzBundleHeaders feeds arbitrary If-None-Match and Prefer values to the
// bundle service's parsers: no panic, a wait never negative, and an ETag
// listed verbatim always matches. Seeds are in testdata/fuzz/FuzzBundleHeaders.
func FuzzBundleHeaders(f *testing.F) {
	f.Add(`"a", W/"b"`, "modes=snapshot,delta;wait=60", `"b"`)
	f.Add("*", "wait=99999999999999999999", `"x"`)
	f.Fuzz(func(t *testing.T, inm, prefer, etag string) {
		ETagMatches([]string{inm}, etag)
		if !ETagMatches([]string{inm + "," + etag}, strings.TrimSpace(etag)) && !strings.Contains(etag, ",") && strings.TrimSpace(etag) != "" {
			t.Fatalf("%q listed in %q does not match", etag, inm+","+etag)
		}
		if w, _ := PreferWait([]string{prefer}); w < 0 {
			t.Fatalf("wait %v from %q", w, prefer)
		}
	})
}

// FuzzEnvoyInput feeds arbitrary JSON to the ext_authz input builder and
// arbitrary decision values to the result readers: no panic. Seeds are in
// testdata/fuzz/FuzzEnvoyInput.
func FuzzEnvoyInput(f *testing.F) {
	f.Add([]byte(`{"attributes":{"request":{"http":{"path":"/a/b%2F?x=1&x=2","headers":{"X-A":"1"}}}}}`), []byte(`{"allowed":true,"http_status":403}`))
	f.Add([]byte(`{"attributes":{"request":{"http":{"path":"%zz"}}}}`), []byte(`{"allow":"x","ttl":-1,"dns_names":[1]}`))
	f.Fuzz(func(t *testing.T, check, result []byte) {
		EnvoyInput(check)
		var v any
		dec := json.NewDecoder(strings.NewReader(string(result)))
		dec.UseNumber()
		if dec.Decode(&v) != nil {
			return
		}
		if m, ok := v.(map[string]any); ok {
			authzObject(m)
			decision(m)
		}
	})
}

// FuzzBundleToken feeds arbitrary Authorization headers to the bearer and
// bundle token parsers: no panic; a token accepted re-encodes to itself
// (one spelling per token, so the audit trail's IDs are unambiguous).
// Seeds are in testdata/fuzz/FuzzBundleToken.
func FuzzBundleToken(f *testing.F) {
	f.Add("Bearer mbt.0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	f.Add("bearer mbt.0123456789ABCDEF.x")
	f.Add("Basic dXNlcjpwYXNz")
	f.Fuzz(func(t *testing.T, header string) {
		tok, ok := BearerToken(header)
		if !ok {
			return
		}
		id, sum, err := ParseBundleToken(tok)
		if err != nil {
			if !errors.Is(err, ErrMalformedToken) {
				t.Fatalf("ParseBundleToken: %v", err)
			}
			return
		}
		if len(sum) != 32 || !strings.HasPrefix(tok, BundleTokenPrefix+id+".") || len(tok) != len(BundleTokenPrefix)+16+1+43 {
			t.Fatalf("accepted %q as id %q", tok, id)
		}
	})
}
