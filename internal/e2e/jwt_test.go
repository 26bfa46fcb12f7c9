package e2e

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"
)

// go-spiffe fetches a JWT-SVID for our entry, validates it with the JWT
// bundle from the Workload API, and the agent's ValidateJWTSVID accepts it
// for its audience only.
func TestJWTSVIDs(t *testing.T) {
	e := startServer(t)
	token := e.token()
	a := e.startAgent(token, 0.5)
	c := client(t, a)
	e.entry(agentIDFor(token), "spiffe://example.org/test/api", time.Hour, "unix:uid:"+uid)

	var svid *jwtsvid.SVID
	var err error
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if svid, err = c.FetchJWTSVID(tctx(t, 5*time.Second), jwtsvid.Params{Audience: "db"}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no JWT-SVID: %v", err)
		}
	}
	if svid.ID.String() != "spiffe://example.org/test/api" || len(svid.Audience) != 1 || svid.Audience[0] != "db" {
		t.Errorf("JWT-SVID for %s, audience %v", svid.ID, svid.Audience)
	}
	if left := time.Until(svid.Expiry); left <= 0 || left > 5*time.Minute {
		t.Errorf("JWT-SVID expires in %s, want within the 5 minute default", left)
	}
	bundles, err := c.FetchJWTBundles(tctx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(svid.Marshal(), bundles, []string{"db"}); err != nil {
		t.Errorf("the JWT-SVID does not validate with the JWT bundle: %v", err)
	}
	if _, err := jwtsvid.ParseAndValidate(svid.Marshal(), bundles, []string{"other"}); err == nil {
		t.Error("validated for another audience")
	}
	got, err := c.ValidateJWTSVID(tctx(t, 5*time.Second), svid.Marshal(), "db")
	if err != nil || got.ID != svid.ID {
		t.Errorf("agent's ValidateJWTSVID: %v, %v", got, err)
	}
	if _, err := c.ValidateJWTSVID(tctx(t, 5*time.Second), svid.Marshal(), "other"); err == nil {
		t.Error("the agent validated a JWT-SVID for another audience")
	}
	tampered := svid.Marshal()
	tampered = tampered[:len(tampered)-4] + "AAAA"
	if _, err := c.ValidateJWTSVID(tctx(t, 5*time.Second), tampered, "db"); err == nil {
		t.Error("the agent validated a tampered JWT-SVID")
	}
}

// An operator taints the active JWT signing key: a successor signs at once,
// the agent re-signs the JWT-SVID it had cached, and the tainted key stays
// in the JWT bundle so the JWT-SVIDs it signed still validate. Revoking it
// is refused while they may live (unless forced); revoked, it leaves the
// bundle and its JWT-SVIDs stop validating. Refusals change nothing.
func TestTaintAndRevokeJWTKey(t *testing.T) {
	e := startServer(t)
	token := e.token()
	a := e.startAgent(token, 0.5)
	c := client(t, a)
	e.entry(agentIDFor(token), "spiffe://example.org/test/jwt", time.Hour, "unix:uid:"+uid)
	var old *jwtsvid.SVID
	var err error
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if old, err = c.FetchJWTSVID(tctx(t, 5*time.Second), jwtsvid.Params{Audience: "db"}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no JWT-SVID: %v", err)
		}
	}
	kidOf := func(s *jwtsvid.SVID) string { return tokenKid(t, s.Marshal()) }
	oldID := "jwt/" + kidOf(old)
	if a := authorityByID(t, e.op, oldID); a == nil || a.StateName != "ACTIVE" {
		t.Fatalf("the JWT-SVID's key %s is not the active key: %v", oldID, a)
	}
	for _, c := range []struct {
		what string
		err  error
		want codes.Code
	}{
		{"revoke the active key", func() error {
			_, err := e.op.RevokeAuthority(tctx(t, 10*time.Second), &operatorpb.AuthorityStepRequest{Id: oldID})
			return err
		}(), codes.FailedPrecondition},
		{"taint an unknown key", func() error {
			_, err := e.op.TaintAuthority(tctx(t, 10*time.Second), &operatorpb.AuthorityStepRequest{Id: "jwt/nope"})
			return err
		}(), codes.NotFound},
		{"prepare a JWT key", func() error {
			_, err := e.op.PrepareAuthority(tctx(t, 10*time.Second), &operatorpb.AuthorityStepRequest{Id: oldID})
			return err
		}(), codes.FailedPrecondition},
	} {
		if grpcstatus.Code(c.err) != c.want {
			t.Errorf("%s: %v, want %s", c.what, c.err, c.want)
		}
	}
	if dry, err := e.op.TaintAuthority(tctx(t, 10*time.Second), &operatorpb.AuthorityStepRequest{Id: oldID, DryRun: true}); err != nil || dry.Authority.StateName != "TAINTED" {
		t.Fatalf("dry run: %v, %v", dry, err)
	}
	if a := authorityByID(t, e.op, oldID); a.StateName != "ACTIVE" {
		t.Fatalf("after refusals and a dry run %s is %s", oldID, a.StateName)
	}

	if _, err := e.op.TaintAuthority(tctx(t, 10*time.Second), &operatorpb.AuthorityStepRequest{Id: oldID}); err != nil {
		t.Fatal(err)
	}
	var fresh *jwtsvid.SVID
	waitFor(t, 20*time.Second, "the agent re-signs the JWT-SVID with the successor", func() error {
		s, err := c.FetchJWTSVID(tctx(t, 5*time.Second), jwtsvid.Params{Audience: "db"})
		if err != nil {
			return err
		}
		if kidOf(s) == kidOf(old) {
			return errors.New("still the tainted key's")
		}
		fresh = s
		return nil
	})
	if a := authorityByID(t, e.op, "jwt/"+kidOf(fresh)); a == nil || a.StateName != "ACTIVE" {
		t.Errorf("the successor is %v", a)
	}
	bundles, err := c.FetchJWTBundles(tctx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*jwtsvid.SVID{old, fresh} {
		if _, err := jwtsvid.ParseAndValidate(s.Marshal(), bundles, []string{"db"}); err != nil {
			t.Errorf("a JWT-SVID of %s does not validate after the taint: %v", kidOf(s), err)
		}
	}
	_, err = e.op.RevokeAuthority(tctx(t, 10*time.Second), &operatorpb.AuthorityStepRequest{Id: oldID})
	if grpcstatus.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "may be in use until") {
		t.Errorf("revoke while its JWT-SVIDs may live: %v", err)
	}
	if resp, err := e.op.RevokeAuthority(tctx(t, 10*time.Second), &operatorpb.AuthorityStepRequest{Id: oldID, Force: true}); err != nil || resp.Authority.StateName != "REVOKED" {
		t.Fatalf("revoke --force: %v, %v", resp, err)
	}
	waitFor(t, 20*time.Second, "the revoked key leaves the JWT bundle", func() error {
		b, err := c.FetchJWTBundles(tctx(t, 5*time.Second))
		if err != nil {
			return err
		}
		if _, err := jwtsvid.ParseAndValidate(old.Marshal(), b, []string{"db"}); err == nil {
			return errors.New("the revoked key's JWT-SVID still validates")
		}
		if _, err := jwtsvid.ParseAndValidate(fresh.Marshal(), b, []string{"db"}); err != nil {
			return fmt.Errorf("the successor's JWT-SVID: %v", err)
		}
		return nil
	})
	if _, err := c.ValidateJWTSVID(tctx(t, 5*time.Second), old.Marshal(), "db"); err == nil {
		t.Error("the agent validates a JWT-SVID of a revoked key")
	}
}

// tokenKid returns the kid of a compact JWS's header.
func tokenKid(t testing.TB, token string) string {
	t.Helper()
	head, _, _ := strings.Cut(token, ".")
	b, err := base64.RawURLEncoding.DecodeString(head)
	if err != nil {
		t.Fatal(err)
	}
	var h struct {
		Kid string `json:"kid"`
	}
	if err := json.Unmarshal(b, &h); err != nil || h.Kid == "" {
		t.Fatalf("JWT header %s: %v", b, err)
	}
	return h.Kid
}
