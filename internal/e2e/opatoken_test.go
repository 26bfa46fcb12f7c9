package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/audit"
	"github.com/meshca/meshca/internal/testtool"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/server"
)

// TestStockOPABearerToken: a stock OPA with no X509-SVID, configured with
// credentials.bearer.token (a token made by CreateBundleToken), pulls the
// signed bundle over TLS and gets new revisions by long poll. A wrong
// token (a second OPA), a revoked one (the first OPA, its long poll held
// across the revocation) and an expired one (on the server's injected
// clock) are refused with 401; a token for another bundle with 403; every
// refusal and every fetch is audited, and the secret never appears in the
// audit trail, the server's log or the token list.
func TestStockOPABearerToken(t *testing.T) {
	bin := testtool.OPA(t)
	fc := clockwork.NewFakeClockAt(time.Now())
	e := startServerWith(t, func(c *server.Config) { c.BundleAddr = "127.0.0.1:0"; c.Clock = fc })
	ctx := tctx(t, 2*time.Minute)
	for _, name := range []string{"authz", "other"} {
		if _, err := e.op.PushBundle(ctx, &operatorpb.PushBundleRequest{Name: name, Files: authzFiles("alice")}); err != nil {
			t.Fatal(err)
		}
	}
	key, err := e.op.GetOPAKey(ctx, &operatorpb.GetOPAKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	create := func(name string, ttl time.Duration, bundles ...string) *operatorpb.CreateBundleTokenResponse {
		t.Helper()
		resp, err := e.op.CreateBundleToken(ctx, &operatorpb.CreateBundleTokenRequest{Name: name, TtlSeconds: int64(ttl / time.Second), Bundles: bundles})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	edge := create("opa-edge", 0, "authz")
	otherTok := create("opa-other", 0, "other")
	short := create("opa-short", time.Hour, "authz")
	if _, err := e.op.CreateBundleToken(ctx, &operatorpb.CreateBundleTokenRequest{Name: "opa-edge"}); err == nil {
		t.Fatal("a second token named opa-edge was created")
	}

	dir := tempDir(t)
	testtool.WriteFile(t, dir, "bundle.pem", e.srv.TrustBundle()) // no svid.pem: the token is all OPA has
	_, port, _ := net.SplitHostPort(e.srv.BundleAddr())
	url := "https://localhost:" + port + "/v1"
	bearer := func(tok string) map[string]any { return map[string]any{"bearer": map[string]any{"token": tok}} }
	opa := startOPAWith(t, bin, dir, url, key, bearer(edge.Token))
	waitUntil(t, 60*time.Second, "OPA activates revision 1 with its bearer token", func() bool { return opa.revision() == "1" })
	if !opa.allowed("alice") || opa.allowed("bob") {
		t.Fatal("OPA does not decide by revision 1")
	}
	edgeActor := "bundle-token:opa-edge/" + edge.Info.Id
	if _, err := e.events.Wait(ctx, func(ev audit.Event) bool {
		return ev.Action == "policy.bundle.fetch" && ev.Decision == audit.Allow && ev.Actor == edgeActor && ev.Subject == "authz"
	}); err != nil {
		t.Fatal("no allow audited for the token's fetch:", err)
	}
	if _, err := e.op.PushBundle(ctx, &operatorpb.PushBundleRequest{Name: "authz", Files: authzFiles("bob")}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 2*time.Second, "OPA activates revision 2 by long poll", func() bool { return opa.revision() == "2" })

	// Plain requests: no credentials, a malformed token, a wrong secret
	// for a real ID (401), another bundle's token (403), the right one.
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(e.srv.TrustBundle())
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "localhost", Time: fc.Now}}}
	get := func(tok string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", url+"/bundles/authz", nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode == 401 && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("401 without a Bearer challenge: %q", resp.Header.Get("WWW-Authenticate"))
		}
		return resp.StatusCode, string(b)
	}
	wrongSecret := edge.Token[:len(edge.Token)-4] + "AAAA"
	if wrongSecret == edge.Token {
		wrongSecret = edge.Token[:len(edge.Token)-4] + "BBBA"
	}
	denied := func(actor, reason string) {
		t.Helper()
		if _, err := e.events.Wait(tctx(t, 10*time.Second), func(ev audit.Event) bool {
			return ev.Action == "policy.bundle.fetch" && ev.Decision == audit.Deny && ev.Actor == actor && strings.Contains(ev.Reason, reason)
		}); err != nil {
			t.Fatalf("no deny audited for %s (%s): %v", actor, reason, err)
		}
	}
	for _, c := range []struct {
		tok, actor, reason string
		status             int
	}{
		{"", "", "X509-SVID of the trust domain or a bundle token", 401},
		{"not-a-token", "", "not a meshca bundle token", 401},
		{wrongSecret, edgeActor, "wrong secret", 401},
		{otherTok.Token, "bundle-token:opa-other/" + otherTok.Info.Id, `may download other, not "authz"`, 403},
	} {
		if code, body := get(c.tok); code != c.status {
			t.Fatalf("token %.12q: %d %q, want %d", c.tok, code, body, c.status)
		}
		denied(c.actor, c.reason)
	}
	if code, _ := get(short.Token); code != 200 {
		t.Fatalf("an unexpired token: %d", code)
	}

	// A second OPA with a wrong secret gets nothing.
	opa2 := startOPAWith(t, bin, dir, url, key, bearer(wrongSecret))
	waitUntil(t, 30*time.Second, "the OPA with a wrong token is refused (401)", func() bool {
		return strings.Contains(opa2.log.String(), "401")
	})
	if opa2.revision() != "" {
		t.Fatal("an OPA with a wrong token activated a bundle")
	}

	// Revoked while the first OPA's long poll is held: the push that wakes
	// it is refused, and OPA keeps revision 2.
	n := len(e.events.Events())
	if _, err := e.op.RevokeBundleToken(ctx, &operatorpb.RevokeBundleTokenRequest{Name: "opa-edge"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.op.PushBundle(ctx, &operatorpb.PushBundleRequest{Name: "authz", Files: authzFiles("carol")}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.events.Wait(ctx, func(ev audit.Event) bool {
		return ev.Seq > uint64(n) && ev.Action == "policy.bundle.fetch" && ev.Decision == audit.Deny &&
			ev.Actor == "bundle-token:"+edge.Info.Id && strings.Contains(ev.Reason, "unknown or revoked")
	}); err != nil {
		t.Fatal("the revoked token's request was not refused and audited:", err)
	}
	if rev := opa.revision(); rev != "2" {
		t.Fatalf("OPA has revision %q after its token was revoked, want 2", rev)
	}

	// Expired on the server's clock.
	fc.Advance(time.Hour + time.Second)
	if code, body := get(short.Token); code != 401 || !strings.Contains(body, "expired") {
		t.Fatalf("an expired token: %d %q", code, body)
	}
	denied("bundle-token:opa-short/"+short.Info.Id, "expired at")
	list, err := e.op.ListBundleTokens(ctx, &operatorpb.ListBundleTokensRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Tokens) != 2 || list.Tokens[0].Name != "opa-other" || list.Tokens[1].Name != "opa-short" || !list.Tokens[1].Expired {
		t.Fatalf("tokens listed: %v", list.Tokens)
	}

	// The secrets are nowhere but with their holders.
	for _, tok := range []string{edge.Token, otherTok.Token, short.Token} {
		secret := tok[strings.LastIndex(tok, ".")+1:]
		if strings.Contains(e.audit.String(), secret) {
			t.Fatal("a token's secret is in the server's log")
		}
		for _, ev := range e.events.Events() {
			if strings.Contains(ev.Actor+ev.Subject+ev.Reason+strings.Join(mapValues(ev.Details), " "), secret) {
				t.Fatalf("a token's secret is in audit event %+v", ev)
			}
		}
		if strings.Contains(list.String(), secret) {
			t.Fatal("a token's secret is in the token list")
		}
	}
}

func mapValues(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
