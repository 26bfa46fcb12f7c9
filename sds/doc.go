// Package sds serves Envoy's Secret Discovery Service v3
// (envoy.service.secret.v3.SecretDiscoveryService): StreamSecrets (state
// of the world), DeltaSecrets (incremental) and FetchSecrets, to the
// proxies on a node. It knows resources, names, versions, nonces and
// subscriptions; it neither attests callers nor issues anything.
//
// # The seam to the agent
//
// [New] takes a [Config] whose Secrets function returns, per stream (at
// its first request) and per fetch, the [Source] of the calling
// workload's secrets: the agent attests the peer there (SO_PEERCRED from
// the context) and returns that workload's view. A Source resolves one
// name at a time to [Grant] (a [Resource]: any *tlsv3.Secret with a
// version that changes iff its content changes), [Refuse] or [Wait], and
// lists the names a wildcard subscription gets. Every answer names the
// change topics it depends on — strings the agent chooses, e.g. one per
// SVID, one per trust bundle with its CRLs, one for the workload's
// entries — and the agent calls [Server.Notify] with a topic after the
// change behind it is visible. Only streams whose current answers depend
// on a notified topic are woken; they resolve their names again and are
// sent only what changed (per-resource versions are compared first), so a
// rotation of one workload's SVID is sent to that workload's streams
// alone and a spurious notification sends nothing. Idle streams cost no
// goroutine beyond gRPC's handler and are never polled. New resource
// kinds (OPA bundles as generic_secret) are just other Resources: the
// protocol code does not look inside them.
//
// # Names
//
// The protocol code accepts any name; the agent's Source interprets them,
// with [Naming.Parse] for the conventions (the defaults are configurable):
//
//   - "default": the caller's tls_certificate (Istio; SPIRE's
//     default_svid_name);
//   - "ROOTCA": the validation context of the own trust domain's roots and
//     CRLs (Istio; SPIRE's default_bundle_name);
//   - a SPIFFE ID, "spiffe://example.org/ns/a/sa/b": the tls_certificate of
//     that identity, if the caller has it (SPIRE);
//   - a trust domain ID, "spiffe://example.org": that trust domain's
//     validation context (SPIRE; federated trust domains too);
//   - "ALL": every bundle as one validation context using Envoy's SPIFFE
//     certificate validator, one trust domain entry each
//     ([SPIFFEValidationContextSecret]), or a plain trusted_ca of every
//     root when disabled by the agent config or by the Envoy node metadata
//     key "disable_spiffe_cert_validation" ([ParseNodeOptions]);
//   - SM2: the suffix "~sm2" on any of these ("default~sm2", "ROOTCA~sm2",
//     "spiffe://example.org/app~sm2", "ALL~sm2") names the SM2 variant;
//     "~ecdsa" names the ECDSA variant explicitly. A name without a suffix
//     is the agent's choice ([Name].Explicit is false): meshca's agent
//     answers ECDSA, because a stock BoringSSL Envoy cannot parse SM2, and
//     SM2 only to a workload that has SM2 identities and no ECDSA one
//     (see [ProfileSeparator]).
//
// The builders [TLSCertificateSecret] and [ValidationContextSecret] make
// the secrets as Envoy needs them: inline PEM, chains leaf first, PKCS#8
// keys, and in a validation context the CRL of every CA that can appear in
// a chain (each intermediate and the root) or none: Envoy rejects every
// certificate of a chain in which only some CAs have a CRL.
//
// # Refusals
//
// A name the caller may not have gets no resource, never an error, the
// same way on all three methods, and the stream stays open:
//
//   - StreamSecrets: the response leaves the name out; if nothing else is
//     granted the response carries no resource (but version_info and a
//     nonce). Envoy NACKs such a response ("Missing SDS resources"); the
//     NACK is counted and nothing is resent.
//   - DeltaSecrets: the name is listed in removed_resources (the
//     incremental "does not exist"); Envoy acknowledges it.
//   - FetchSecrets: the name is left out of the response.
//
// Every refusal and every grant goes to [Config.Audit] (on a stream when a
// name is first decided and whenever the decision flips, not on every
// rotation). A refused name stays subscribed: if the caller later gets it
// (a new entry), it is sent. A name that is Pending (the caller may have
// it but its SVID is being issued) is not answered until it is decided, so
// that a starting Envoy waits for its certificate instead of warming
// without it; FetchSecrets waits up to [Config.FetchWait].
//
// # Protocol guarantees
//
// Every response carries version_info (a digest of the names and versions
// it carries, the same for the same content on every stream and fetch; on
// delta, system_version_info) and a fresh random nonce. Every Secret's name
// is the name requested. The type URL must be
// type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret or
// empty (implicit on this singleton service); any other is InvalidArgument.
//
// State of the world:
//   - the first request is answered once its names are decided; an empty
//     resource_names on it (or "*") subscribes to every name the caller may
//     have, including names it gets later;
//   - a request carrying the latest nonce and no error_detail is an ACK: it
//     sends nothing unless its resource_names changed the subscription,
//     which is answered with exactly the new set;
//   - a request whose nonce is not the latest is stale and ignored whole
//     (as SPIRE does): Envoy's ACK of the newer response carries its
//     current names anyway;
//   - a NACK (error_detail set) is logged, counted ([Stats].NACKs,
//     [Config.OnRequest]) and not answered: the rejected content is not
//     resent; the next change is pushed;
//   - a change is pushed as a full response of the subscribed names; a
//     push waits for the ACK or NACK of the previous response.
//
// Delta:
//   - initial_resource_versions on the first request are honoured: nothing
//     is sent for a resource whose version the client already has;
//   - only changed resources are sent; a resource the caller loses is in
//     removed_resources; unsubscribing stops its updates; subscribing again
//     to a held name resends it;
//   - subscription changes apply whatever the request's nonce (they are
//     deltas; a spontaneous request has none), but only a request carrying
//     the latest nonce acknowledges (ACK) or rejects (NACK, with
//     error_detail) the latest response.
//
// # Bounds
//
// A request may name at most [Config.MaxNames] (default 1,000) resources,
// each at most [MaxNameBytes], and a delta stream may hold as many; beyond,
// the stream fails with InvalidArgument. The message size is bounded by
// the gRPC server's MaxRecvMsgSize (ResourceExhausted); a frame that does
// not decode fails its stream with Internal. None of this affects other
// streams.
//
// # Concurrency and cost
//
// Each stream is served by its gRPC handler goroutine, which receives and
// answers requests; pushes run on at most [Config.Workers] goroutines that
// exist only while there is work. A push never waits on a slow client (it
// is sent only once the previous response is acknowledged, so gRPC flow
// control never blocks it). Per idle stream the server holds a few hundred
// bytes of state besides gRPC's own; see README.md for measured figures.
package sds
