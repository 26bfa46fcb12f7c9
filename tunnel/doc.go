// Package tunnel is meshca's reference tunnel endpoint (`meshca tunnel`):
// an L4 mTLS proxy, like stunnel, ghostunnel or Envoy's TCP proxy, that
// gets everything it enforces from the local agent over SDS, exactly as an
// Envoy would, and nothing from anywhere else. It talks to no server.
//
// # Secrets
//
// Three SDS state-of-the-world streams to the agent's socket, one per
// secret (as Envoy opens them without ADS), each with a
// [sdsclient.Watcher] that ACKs what parses and NACKs what does not:
//
//   - "default" (Config.SVIDName): the workload's X509-SVID and key;
//   - "ROOTCA" (Config.BundleName): the own trust domain's roots and the
//     CRL of every CA of a chain;
//   - "opa-bundle:<Config.Bundle>": the signed OPA bundle; its signature is
//     verified with the trust domain's OPA key (Config.BundleKeyPEM, from
//     `meshca bundle show --opa-key`) before it is compiled with
//     policy.CompileAuthz, the agent's ext_authz code.
//
// Each parsed secret is swapped in atomically; a handshake loads the
// three once and uses them throughout, so a rotated certificate, a new
// CRL or a new policy revision applies to the next connection while open
// connections keep running (Config.DrainOnRevoke closes those whose peer
// a new CRL revokes). A secret that does not parse is NACKed and the last
// good one stays. While a listener lacks one of its secrets (or its
// certificate has expired) it accepts no connection: each is closed at
// once, audited as a denial with the reason, and [Tunnel.Ready] (/readyz)
// says why. When the agent goes away the watchers reconnect with backoff
// and the last good secrets keep serving until the certificate expires.
//
// # Listeners
//
// Inbound (TLS termination): TLS 1.3 only, client certificate required,
// verified as an X509-SVID of the own trust domain against the roots at
// Config.Clock's time, then every certificate of the chain but the root
// against its issuer's CRL (all or none: with CRLs, a CA without one fails
// the chain, as in Envoy); then the policy decides on OPA-Envoy's input
// (attributes.source.principal and address, attributes.destination
// principal and address, attributes.contextExtensions with the listener,
// direction, mode and whether the peer is authenticated), then the
// connection is forwarded in plaintext to the target. PERMISSIVE
// listeners also take plaintext, told apart from TLS by the first two
// bytes (a handshake record, 0x16 0x03), and ask the policy with no
// source principal and meshca_tunnel_authenticated "false".
//
// Outbound (TLS origination): plaintext from local clients, mTLS to the
// remote with the workload's SVID; the remote's chain is verified the same
// way and its SPIFFE ID must be one of Outbound.ExpectIDs, or the policy
// decides (source: this workload, destination: the remote). With
// Outbound.External the remote is a service outside the mesh, verified by
// the web PKI and its name (an egress gateway, behind an inbound listener
// whose policy decides who may leave).
//
// A peer chain's path validation is kept per validation context for the
// chain's validity window (a reconnecting peer presents the same SVID);
// the CRL check and the policy run on every connection.
//
// The first bytes, the handshake and the decision are bounded by
// Config.HandshakeTimeout (slowloris clients are cut off). Every decision
// is an audit.Event ("tunnel.connect"; actor the source, subject the
// destination); every connection's end is a log line with the peer's ID,
// the decision, bytes both ways and the duration, and is counted in the
// metrics (meshca_tunnel_*).
//
// SM2 certificates are refused with [ErrSM2]: Go's TLS has no SM2 cipher
// suites.
package tunnel
