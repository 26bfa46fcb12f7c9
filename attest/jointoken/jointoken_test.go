package jointoken

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/meshca/meshca/attest"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

// tokenStore consumes tokens exactly once, like the server's Raft command.
type tokenStore struct {
	mu       sync.Mutex
	tokens   map[string]string // hex hash -> consumer, "" = unused
	consumed []string          // agent IDs, in order
}

func newStore(tokens ...string) *tokenStore {
	s := &tokenStore{tokens: map[string]string{}}
	for _, tok := range tokens {
		h := sha256.Sum256([]byte(tok))
		s.tokens[hex.EncodeToString(h[:])] = ""
	}
	return s
}

func (s *tokenStore) consume(_ context.Context, hash []byte, agentID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	consumer, ok := s.tokens[hex.EncodeToString(hash)]
	switch {
	case !ok:
		return errors.New("raftfsm: unknown join token")
	case consumer != "":
		return errors.New("raftfsm: join token already used")
	}
	s.tokens[hex.EncodeToString(hash)] = agentID
	s.consumed = append(s.consumed, agentID)
	return nil
}

func TestAttest(t *testing.T) {
	const token = "Zm9vYmFyLXRva2VuLWZvci1hLXRlc3Q"
	store := newStore(token)
	a := New(td, store.consume)
	ev := NewEvidence(token)
	payload, err := ev.Payload()
	if err != nil {
		t.Fatal(err)
	}
	res, err := a.Attest(t.Context(), payload, nil)
	if err != nil {
		t.Fatalf("Attest = %v", err)
	}
	h := sha256.Sum256([]byte(token))
	short := hex.EncodeToString(h[:16])
	if want := "spiffe://example.org/meshca/agent/join_token/" + short; res.AgentID.String() != want {
		t.Errorf("AgentID = %s, want %s", res.AgentID, want)
	}
	if len(res.Selectors) != 1 || res.Selectors[0].String() != "join_token:"+short {
		t.Errorf("Selectors = %v, want [join_token:%s]", res.Selectors, short)
	}
	if len(store.consumed) != 1 || store.consumed[0] != res.AgentID.String() {
		t.Errorf("consumed %v, want the agent ID once", store.consumed)
	}

	// The same token again: the store refuses it.
	_, err = a.Attest(t.Context(), payload, nil)
	if !errors.Is(err, attest.ErrNotAuthorized) {
		t.Fatalf("second Attest with the same token = %v, want ErrNotAuthorized", err)
	}
	if !strings.Contains(err.Error(), "already used") {
		t.Errorf("error %q does not say why", err)
	}
	if strings.Contains(err.Error(), token) {
		t.Errorf("error %q contains the token", err)
	}
}

func TestAttestFailures(t *testing.T) {
	const token = "a-valid-token"
	unavailable := attest.NewError(attest.KindUnavailable, "", "raft: no leader", nil)
	tests := []struct {
		name    string
		payload string
		consume ConsumeFunc
		want    error
		inMsg   string
	}{
		{name: "fail/unknown-token", payload: `{"token":"not-the-token"}`, want: attest.ErrNotAuthorized, inMsg: "unknown"},
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
		{name: "fail/typed-error-passes-through", payload: `{"token":"a-valid-token"}`,
			consume: func(context.Context, []byte, string) error { return fmt.Errorf("consume: %w", unavailable) },
			want:    attest.ErrUnavailable, inMsg: "no leader"},
		{name: "fail/server-sentinel", payload: `{"token":"a-valid-token"}`,
			consume: func(context.Context, []byte, string) error {
				return fmt.Errorf("%w: join token unknown, already used or expired", attest.ErrNotAuthorized)
			},
			want: attest.ErrNotAuthorized, inMsg: "expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			consume := tt.consume
			if consume == nil {
				consume = newStore(token).consume
			}
			res, err := New(td, consume).Attest(t.Context(), []byte(tt.payload), nil)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Attest(%.40q) = %v, %v; want %v", tt.payload, res, err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.inMsg) {
				t.Errorf("Attest(%.40q) error %q does not contain %q", tt.payload, err, tt.inMsg)
			}
			if strings.Contains(err.Error(), "a-valid-token") || strings.Contains(err.Error(), "not-the-token") {
				t.Errorf("error %q contains the token", err)
			}
		})
	}
}

func TestAttestCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	a := New(td, func(ctx context.Context, _ []byte, _ string) error {
		cancel()
		return ctx.Err()
	})
	_, err := a.Attest(ctx, []byte(`{"token":"t"}`), nil)
	if !errors.Is(err, attest.ErrUnavailable) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Attest with a cancelled consume = %v, want ErrUnavailable wrapping context.Canceled", err)
	}
}

func TestEvidence(t *testing.T) {
	ev := NewEvidence("s3cret")
	if ev.Name() != Name || New(td, newStore().consume).Name() != Name {
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
	for name, f := range map[string]func(){
		"no-consume":      func() { New(td, nil) },
		"no-trust-domain": func() { New(spiffeid.TrustDomain{}, newStore().consume) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("New did not panic")
				}
			}()
			f()
		})
	}
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
