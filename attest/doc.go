// Package attest establishes who is asking for an identity: node attestors
// prove to a server which machine an agent runs on, and workload attestors
// tell an agent which process is calling it. Both produce selectors, the
// type:value pairs that registration entries match. This package and its
// subpackages never issue anything; the server and the agent turn their
// results into SVIDs.
//
// Vocabulary:
//
//   - A [NodeAttestor] runs on a server. It checks the evidence an agent
//     sends (the payload, and for some methods the answer to a challenge)
//     and returns a [NodeResult]: the agent's SPIFFE ID,
//     spiffe://<trust domain>/meshca/agent/<attestor>/<unique part>, and the
//     node's selectors.
//   - A [NodeEvidence] runs on an agent: it is the counterpart of one
//     NodeAttestor, producing the payload and answering challenges.
//   - A [WorkloadAttestor] runs on an agent and returns the selectors of a
//     process identified by its PID (from SO_PEERCRED).
//   - A [Selector] is a type and a value, written "type:value", e.g.
//     "unix:uid:1000" or "k8s_psat:cluster:prod".
//
// One subpackage per method: jointoken, x509pop and k8spsat (node), unix and
// k8s (workload). Each is registered explicitly by its user; there is no
// global registry.
//
// Failures are [*Error] values of a few kinds, matched with errors.Is
// against [ErrInvalidEvidence] (the evidence is malformed),
// [ErrNotAuthorized] (well formed, but refused), [ErrUnavailable] (a
// dependency such as the kubelet could not be reached; retrying may help)
// and [ErrProcessChanged] (the process exited or its PID was reused while
// it was attested). Error messages are meant for the requester and the
// audit log: they never contain tokens, keys or other secrets.
package attest
