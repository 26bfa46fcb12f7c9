package attest

import (
	"context"

	"github.com/meshca/meshca/internal/naming"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// MaxPayloadSize bounds the node attestation payload an attestor accepts.
// Every NodeAttestor refuses a larger payload with ErrInvalidEvidence
// before decoding it.
const MaxPayloadSize = 64 << 10

// NodeResult is what a node attestation established.
type NodeResult struct {
	// AgentID is the agent's SPIFFE ID,
	// spiffe://<trust domain>/meshca/agent/<attestor>/<unique part>.
	// The same node attested again by the same method gets the same ID.
	AgentID spiffeid.ID
	// Selectors describe the node; entries whose parent is a node match
	// them. Their order is stable for a given input.
	Selectors []Selector
	// JoinToken, when set, is the SHA-256 of a single-use token the
	// attestation rests on. The attestor does not consume it: the server
	// does, in the same step that records the agent, once everything else
	// about the attestation has been checked, and refuses the attestation
	// if the token is unknown, already used or expired.
	JoinToken []byte
}

// Challenge sends challenge to the agent being attested and returns its
// response. A NodeAttestor that needs no challenge/response never calls it,
// and callers may pass nil to such attestors.
type Challenge func(ctx context.Context, challenge []byte) ([]byte, error)

// NodeAttestor attests agents on the server side. Implementations are safe
// for concurrent use.
type NodeAttestor interface {
	// Name is the attestation method: "join_token", "x509pop" or "k8s_psat".
	Name() string
	// Attest checks payload, sent by the agent's NodeEvidence.Payload, and
	// for methods with a challenge/response exchanges challenges through
	// challenge. It returns an *Error of kind ErrInvalidEvidence,
	// ErrNotAuthorized or ErrUnavailable when it cannot vouch for the agent.
	Attest(ctx context.Context, payload []byte, challenge Challenge) (*NodeResult, error)
}

// NodeEvidence is the agent side of a NodeAttestor of the same Name.
type NodeEvidence interface {
	// Name is the attestation method, as the server's NodeAttestor names it.
	Name() string
	// Payload returns the evidence to send to the server. It may read files
	// each time (a rotated Kubernetes token, for example).
	Payload() ([]byte, error)
	// Respond answers a challenge of the server. Methods without a
	// challenge/response return an error.
	Respond(challenge []byte) ([]byte, error)
}

// WorkloadAttestor returns the selectors of a process on the agent's node.
// Implementations are safe for concurrent use.
type WorkloadAttestor interface {
	// Name is the attestation method, which is also the type of every
	// selector it returns: "unix" or "k8s".
	Name() string
	// Attest returns the selectors of the process that connected as peer.
	// A process the method does not apply to (a host process for "k8s")
	// yields no selectors and no error, so that an agent can run several
	// workload attestors and take the union of their selectors. If peer's
	// PID no longer belongs to the process that connected, Attest fails
	// with ErrProcessChanged.
	Attest(ctx context.Context, peer Peer) ([]Selector, error)
}

// Peer is a process that connected to the agent's socket, as the kernel
// described it at connect time. Attestors read /proc/<PID> later; these
// fields let them check that it still describes the same process.
type Peer struct {
	PID int32
	// UID and GID are the effective user and group IDs at connect time
	// (SO_PEERCRED).
	UID, GID uint32
	// StartTime is the process's start time, in clock ticks after boot
	// (field 22 of /proc/<pid>/stat), read when it connected; zero if not
	// known. A process with the same PID and another start time is
	// another process.
	StartTime uint64
	// Alive, if set, reports whether the process that connected still
	// runs: it holds a pidfd taken at connect time (SO_PEERPIDFD), which
	// a later process with the same PID cannot satisfy. While it does, the
	// PID cannot be reused.
	Alive func() error
}

// AgentID returns spiffe://<td>/meshca/agent/<attestor>/<unique...>, the
// SPIFFE ID of an agent attested by the method attestor. Each unique part
// must be a valid SPIFFE ID path segment (letters, digits, '.', '-', '_').
// The naming scheme is meshca's (internal/naming); attestors call it here.
func AgentID(td spiffeid.TrustDomain, attestor string, unique ...string) (spiffeid.ID, error) {
	return naming.AgentID(td, attestor, unique...)
}
