// Package jointoken is the join_token node attestation method: the agent
// presents a single-use secret token an operator created
// (`meshca token create`), and the server consumes it through Raft, so each
// token admits exactly one agent, once, before it expires.
//
// The payload is the JSON object {"token": "<token>"}. The agent's ID is
// spiffe://<td>/meshca/agent/join_token/<h>, where h is the hex of the
// first 16 bytes of SHA-256(token), and its one selector is join_token:<h>.
// The token itself never appears in IDs, selectors or error messages.
package jointoken

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/attest/internal/jsonpayload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Name is the attestation method and the type of its selectors.
const Name = "join_token"

// MaxTokenLen bounds a token (meshca makes 43-byte tokens).
const MaxTokenLen = 256

// ConsumeFunc consumes a join token exactly once. tokenHash is
// SHA-256(token) (the server stores only that), agentID the SPIFFE ID the
// token will admit, recorded as its consumer. It returns an error when the
// token is unknown, already used or expired, or when it cannot be consumed
// now; an error that is not already an *attest.Error is reported as
// ErrNotAuthorized (or ErrUnavailable if ctx is done).
type ConsumeFunc func(ctx context.Context, tokenHash []byte, agentID string) error

// Attestor is the server side of join_token.
type Attestor struct {
	td      spiffeid.TrustDomain
	consume ConsumeFunc
}

var _ attest.NodeAttestor = (*Attestor)(nil)

// New returns a join_token attestor for agents of td that consumes tokens
// with consume. It panics if td is zero or consume nil: both are wiring
// mistakes, not runtime conditions.
func New(td spiffeid.TrustDomain, consume ConsumeFunc) *Attestor {
	if td.IsZero() || consume == nil {
		panic("jointoken.New: a trust domain and a consume function are required")
	}
	return &Attestor{td: td, consume: consume}
}

// Name returns "join_token".
func (a *Attestor) Name() string { return Name }

// Attest decodes the token, derives the agent ID from its hash and
// consumes it. No challenge is used; challenge may be nil.
func (a *Attestor) Attest(ctx context.Context, payload []byte, _ attest.Challenge) (*attest.NodeResult, error) {
	p, err := decodePayload(payload)
	if err != nil {
		return nil, err
	}
	hash := sha256.Sum256([]byte(p.Token))
	short := hex.EncodeToString(hash[:16])
	id, err := AgentID(a.td, p.Token)
	if err != nil {
		return nil, attest.NewError(attest.KindInvalidEvidence, Name, "agent ID", err)
	}
	if err := a.consume(ctx, hash[:], id.String()); err != nil {
		var typed *attest.Error
		switch {
		case errors.As(err, &typed):
			return nil, err
		case ctx.Err() != nil:
			return nil, attest.NewError(attest.KindUnavailable, Name, "consuming the token was interrupted", err)
		}
		return nil, attest.NewError(attest.KindNotAuthorized, Name, "join token refused (unknown, already used, expired, or of another kind)", err)
	}
	return &attest.NodeResult{AgentID: id, Selectors: []attest.Selector{{Type: Name, Value: short}}}, nil
}

// payload is the JSON evidence.
type payload struct {
	Token string `json:"token"`
}

func decodePayload(b []byte) (*payload, error) {
	var p payload
	if err := jsonpayload.Decode(b, attest.MaxPayloadSize, &p); err != nil {
		return nil, attest.NewError(attest.KindInvalidEvidence, Name, "payload", err)
	}
	if len(p.Token) == 0 || len(p.Token) > MaxTokenLen {
		return nil, attest.NewError(attest.KindInvalidEvidence, Name,
			fmt.Sprintf("token is %d bytes, want 1 to %d", len(p.Token), MaxTokenLen), nil)
	}
	return &p, nil
}

// Evidence is the agent side of join_token.
type Evidence struct {
	token string
}

var _ attest.NodeEvidence = (*Evidence)(nil)

// NewEvidence returns evidence presenting token.
func NewEvidence(token string) *Evidence { return &Evidence{token: token} }

// AgentID is the SPIFFE ID the agent that uses token gets:
// spiffe://<td>/meshca/agent/join_token/<hex of the first 16 bytes of
// SHA-256(token)>. Operators can write entries for it before it attests.
func AgentID(td spiffeid.TrustDomain, token string) (spiffeid.ID, error) {
	hash := sha256.Sum256([]byte(token))
	return attest.AgentID(td, Name, hex.EncodeToString(hash[:16]))
}

// Name returns "join_token".
func (e *Evidence) Name() string { return Name }

// Payload returns {"token": "<token>"}.
func (e *Evidence) Payload() ([]byte, error) {
	if len(e.token) == 0 || len(e.token) > MaxTokenLen {
		return nil, fmt.Errorf("%s: token is %d bytes, want 1 to %d", Name, len(e.token), MaxTokenLen)
	}
	return json.Marshal(payload{Token: e.token})
}

// Respond fails: join_token has no challenge.
func (e *Evidence) Respond([]byte) ([]byte, error) {
	return nil, fmt.Errorf("%s: no challenge/response in this method", Name)
}

// String hides the token, so that logging the evidence leaks nothing.
func (e *Evidence) String() string { return Name + " evidence" }
