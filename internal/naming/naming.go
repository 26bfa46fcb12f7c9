// Package naming is meshca's SPIFFE ID naming scheme, in one place: the
// IDs of servers and node agents, and the paths reserved for them.
//
// Every identity meshca gives itself lives under the reserved path /meshca
// of the trust domain:
//
//	spiffe://<trust domain>/meshca/server/<node ID>            a CA server
//	spiffe://<trust domain>/meshca/agent/<attestor>/<unique...> a node agent
//
// No registration entry or operator mint may name a reserved path, so a
// workload can never hold the identity of a server or an agent.
//
// The package depends on go-spiffe's spiffeid alone, so that attestation
// (see package attest and its dependency fence) may use it.
package naming

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Reserved is the path under which meshca names its own servers and
// agents; see IsReserved.
const Reserved = "/meshca"

// ServerIDPrefix is the path prefix of every server's SPIFFE ID, followed
// by the server's node ID.
const ServerIDPrefix = Reserved + "/server/"

// AgentIDPrefix is the path prefix of every node agent's SPIFFE ID,
// followed by the attestation method and the parts it makes unique.
const AgentIDPrefix = Reserved + "/agent/"

// IsReserved reports whether a SPIFFE ID path is meshca's own (Reserved or
// below it): the identities of servers and agents, which no entry or mint
// may name.
func IsReserved(path string) bool {
	return path == Reserved || strings.HasPrefix(path, Reserved+"/")
}

// ServerID returns the SPIFFE ID of the server nodeID of td:
// spiffe://<td>/meshca/server/<nodeID>.
func ServerID(td spiffeid.TrustDomain, nodeID string) (spiffeid.ID, error) {
	id, err := spiffeid.FromPath(td, ServerIDPrefix+nodeID)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("server ID of node %q: %w", nodeID, err)
	}
	return id, nil
}

// IsServerID reports whether id names a server of td.
func IsServerID(td spiffeid.TrustDomain, id spiffeid.ID) bool {
	_, ok := ServerNodeID(td, id)
	return ok
}

// ServerNodeID returns the node ID of the server of td that id names; ok
// is false if id is not a server ID of td.
func ServerNodeID(td spiffeid.TrustDomain, id spiffeid.ID) (nodeID string, ok bool) {
	if id.TrustDomain() != td {
		return "", false
	}
	nodeID, ok = strings.CutPrefix(id.Path(), ServerIDPrefix)
	return nodeID, ok && nodeID != ""
}

// AgentID returns spiffe://<td>/meshca/agent/<attestor>/<unique...>, the
// SPIFFE ID of an agent attested by the method attestor. Each unique part
// must be a valid SPIFFE ID path segment (letters, digits, '.', '-', '_').
func AgentID(td spiffeid.TrustDomain, attestor string, unique ...string) (spiffeid.ID, error) {
	if td.IsZero() {
		return spiffeid.ID{}, errors.New("agent ID: no trust domain")
	}
	if len(unique) == 0 {
		return spiffeid.ID{}, errors.New("agent ID: no unique part")
	}
	// The segments of AgentIDPrefix, then the attestor and the unique parts,
	// each checked as one segment.
	id, err := spiffeid.FromSegments(td, append([]string{"meshca", "agent", attestor}, unique...)...)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("agent ID: %w", err)
	}
	return id, nil
}

// IsAgentID reports whether id names a node agent of td.
func IsAgentID(td spiffeid.TrustDomain, id spiffeid.ID) bool {
	return id.TrustDomain() == td && strings.HasPrefix(id.Path(), AgentIDPrefix)
}

// AgentPathPrefix is the path prefix of the IDs of the agents attested by
// the method attestor: /meshca/agent/<attestor>/.
func AgentPathPrefix(attestor string) string {
	return AgentIDPrefix + attestor + "/"
}
