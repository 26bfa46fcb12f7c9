// Package cluster runs a meshca server's membership in its Raft cluster:
// the Raft node over a mutually authenticated TLS 1.3 transport, writes
// from any server (followers forward to the leader over the cluster's gRPC
// API, so callers never see "not leader"), linearizable reads, and the
// group commit of the issuance ledger.
//
// Every server authenticates with an X509-SVID of its trust domain whose
// SPIFFE ID is spiffe://<trust domain>/meshca/server/<node ID>; a peer
// without one cannot open a Raft or cluster API connection.
//
// Availability. Leadership is followed through Raft's observations: when
// the leader changes, forwards to the old one are cut short, the ledger
// batcher picks its commit slots again, and the connection to the new
// leader is retried at once. Each forward attempt has its own timeout
// (Timing.Forward), since a frozen leader holds its connections open. A
// request waits for an election, but once this server has been without a
// reachable leader for longer than an election takes (Timing.NoLeader) it
// is refused with an UnavailableError naming the cause (no leader, no
// quorum, leader unreachable, removed), so the majority side resumes within
// about two seconds of losing its leader and the minority side refuses
// fast instead of at the caller's deadline. A write whose outcome is
// unknown (the leader was lost while it was in flight) is retried only if
// it is idempotent (ApplyIdempotent); otherwise it returns an
// UnknownOutcomeError.
//
// Membership. A new server is added as a non-voter (AddNonvoter) and
// promoted once caught up, so that the quorum never counts a vote that
// cannot be cast yet. A server removed from the configuration stays up,
// knows it was removed, and can be added back.
package cluster
