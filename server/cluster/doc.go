// Package cluster runs a meshca server's membership in its Raft cluster:
// the Raft node over a mutually authenticated TLS 1.3 transport, writes
// from any server (followers forward to the leader over the cluster's gRPC
// API, so callers never see "not leader"), linearizable reads, and the
// group commit of the issuance ledger.
//
// Every server authenticates with an X509-SVID of its trust domain whose
// SPIFFE ID is spiffe://<trust domain>/meshca/server/<node ID>; a peer
// without one cannot open a Raft or cluster API connection.
package cluster
