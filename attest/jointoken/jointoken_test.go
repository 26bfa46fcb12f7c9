package jointoken

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/meshca/meshca/attest"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// The attestor derives the agent's identity from the token and names the
// token for the server to consume; it consumes nothing itself, so the same
// payload attests to the same result until the server spends the token.
func TestAttest(t *testing.T) {
	const token = "Zm9vYmFyLXRva2VuLWZvci1hLXRlc3Q"
	a := New(td)
	ev := NewEvidence(token)
	payload, err := ev.Payload()
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256([]byte(token))
	short := hex.EncodeToString(h[:16])
	for range 2 {
		res, err := a.Attest(t.Context(), payload, nil)
		if err != nil {
			t.Fatalf("Attest = %v", err)
		}
		if want := "spiffe://example.org/meshca/agent/join_token/" + short; res.AgentID.String() != want {
			t.Errorf("AgentID = %s, want %s", res.AgentID, want)
		}
		if len(res.Selectors) != 1 || res.Selectors[0].String() != "join_token:"+short {
			t.Errorf("Selectors = %v, want [join_token:%s]", res.Selectors, short)
		}
		if !bytes.Equal(res.JoinToken, h[:]) {
			t.Errorf("JoinToken = %x, want SHA-256 of the token %x", res.JoinToken, h)
		}
	}
}

func TestAttestFailures(t *testing.T) {
	tests := []struct {
		name    string
		payload string
		want    error
		inMsg   string
	}{
		{name: "fail/not-json", payload: `token=abc`, want: attest.ErrInvalidEvidence, inMsg: "not a JSON object"},
		{name: "fail/empty", payload: ``, want: attest.ErrInvalidEvidence, inMsg: "empty"},
		{name: "fail/empty-token", payload: `{"token":""}`, want: attest.ErrInvalidEvidence, inMsg: "token is 0 bytes"},
		{name: "fail/no-token", payload: `{}`, want: attest.ErrInvalidEvidence, inMsg: "token is 0 bytes"},
		{name: "fail/long-token", payload: `{"token":"` + strings.Repeat("x", MaxTokenLen+1) + `"}`, want: attest.ErrInvalidEvidence, inMsg: "257 bytes"},
		{name: "fail/unknown-field", payload: `{"token":"a-valid-token","extra":1}`, want: attest.ErrInvalidEvidence, inMsg: "unknown field"},
		{name: "fail/wrong-type", payload: `{"token":42}`, want: attest.ErrInvalidEvidence, inMsg: `field "token"`},
		{name: "fail/trailing", payload: `{"token":"a-valid-token"}{}`, want: attest.ErrInvalidEvidence, inMsg: "trailing"},
		{name: "fail/truncated", payload: `{"token":"a-valid-tok`, want: attest.ErrInvalidEvidence, inMsg: "JSON"},
		{name: "fail/too-large", payload: `{"token":"` + strings.Repeat("x", attest.MaxPayloadSize) + `"}`, want: attest.ErrInvalidEvidence, inMsg: "limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := New(td).Attest(t.Context(), []byte(tt.payload), nil)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Attest(%.40q) = %v, %v; want %v", tt.payload, res, err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.inMsg) {
				t.Errorf("Attest(%.40q) error %q does not contain %q", tt.payload, err, tt.inMsg)
			}
			if strings.Contains(err.Error(), "a-valid-token") {
				t.Errorf("error %q contains the token", err)
			}
		})
	}
}

func TestAttestCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := New(td).Attest(ctx, []byte(`{"token":"t"}`), nil)
	if !errors.Is(err, attest.ErrUnavailable) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Attest with a cancelled context = %v, want ErrUnavailable wrapping context.Canceled", err)
	}
}

func TestEvidence(t *testing.T) {
	ev := NewEvidence("s3cret")
	if ev.Name() != Name || New(td).Name() != Name {
		t.Errorf("names differ from %q", Name)
	}
	p, err := ev.Payload()
	if err != nil || !bytes.Equal(p, []byte(`{"token":"s3cret"}`)) {
		t.Errorf("Payload() = %s, %v", p, err)
	}
	if _, err := ev.Respond([]byte("challenge")); err == nil {
		t.Error("Respond succeeded; join_token has no challenge")
	}
	if s := fmt.Sprintf("%v", ev); strings.Contains(s, "s3cret") {
		t.Errorf("formatting the evidence shows the token: %s", s)
	}
	if _, err := NewEvidence("").Payload(); err == nil {
		t.Error("Payload() of an empty token succeeded")
	}
}

func TestNewPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("New without a trust domain did not panic")
		}
	}()
	New(spiffeid.TrustDomain{})
}

// FuzzDecodePayload checks that payload decoding never panics, accepts
// only tokens within the limits, and fails only with ErrInvalidEvidence.
func FuzzDecodePayload(f *testing.F) {
	for _, s := range []string{`{"token":"abc"}`, `{}`, `{"token":""}`, `null`, `[]`, `{"token":1}`, `{"token":"a"} x`, ` {"TOKEN":"a"} `} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := decodePayload(b)
		if err != nil {
			if !errors.Is(err, attest.ErrInvalidEvidence) {
				t.Fatalf("decodePayload error %v is not ErrInvalidEvidence", err)
			}
			return
		}
		if len(p.Token) == 0 || len(p.Token) > MaxTokenLen {
			t.Fatalf("decodePayload accepted a token of %d bytes", len(p.Token))
		}
	})
}
