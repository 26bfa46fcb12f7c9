package e2e

import (
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
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
