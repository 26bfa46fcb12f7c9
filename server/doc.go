// Package server wires a meshca server process: its TLS identity (a server
// X509-SVID issued from its own intermediate), the Raft cluster node and
// stores, the cluster API (forwarding, joins) and the node API (agent
// attestation, Sync, SVID signing, with admission control) on the API
// address, and the operator API on a local Unix socket and, when
// configured, over mutual TLS for admin SPIFFE IDs.
//
// The first server of a cluster bootstraps: it creates the trust domain's
// roots (their keys sealed under the cluster's key-encryption key and kept
// in the replicated state), its own intermediates (their keys never leave
// it) and its server certificate. Every other server joins through any
// member with a single-use server join token and the trust bundle: it sends
// CSRs for its own intermediates, the leader consumes the token through
// Raft, certifies the intermediates with the root and adds the server to
// the Raft configuration. Every server holds the same KEK.
package server
