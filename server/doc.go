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
//
// # Data directory
//
// A server's data directory (Config.DataDir) holds the following; every
// path of it is named in this package (datadir.go), and the other packages
// and the CLI ask it for them:
//
//	admin.sock            the operator API's Unix socket, while the server
//	                      runs (DefaultAdminSocket, the default of
//	                      Config.AdminSocket)
//	audit/                the server's audit log (package audit), unless
//	                      Config.Audit is set
//	kek                   the key-encryption key, when the operator keeps it
//	                      there, for development only (KEKPath)
//	raft/                 the Raft log, stable store and snapshots (package
//	                      store)
//	server/identity.json  the server's identity: roots, its intermediates and
//	                      TLS certificate, keys sealed under the KEK
//	server/join.json      a join in progress, until the server has an identity
//	server/bundle.pem     the trust bundle (the ECDSA roots), written by New
//	                      at every start, for agents and joining servers
//	                      (TrustBundlePath, LoadTrustBundle)
//	server.lock           the lock of the process running the server
//	                      (LockDataDir)
package server
