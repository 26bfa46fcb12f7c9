// Package agent is the node agent: it attests its node to a server once
// (persisting its own SVID so restarts need no new evidence), keeps that
// SVID renewed, receives the node's registration entries and the trust
// bundle on the server's Sync stream, generates each entry's private key
// locally, has the servers sign batches of CSRs, keeps the SVIDs in memory
// only and renews them at half-life, and serves them to the workloads on
// its node through the SPIFFE Workload API on a Unix socket, after
// attesting each caller (SO_PEERCRED, then the workload attestors).
//
// It survives server restarts and leader changes: it reconnects to any
// configured server with jittered backoff and keeps serving cached SVIDs
// meanwhile.
package agent
