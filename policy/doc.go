// Package policy is meshca's use of Open Policy Agent (the v1 Go API):
//
//   - issuance decisions: an operator's Rego policy, compiled once per
//     revision into a prepared query of data.meshca.issuance, decides
//     which identity a node or a workload may obtain (see Issuance);
//   - authorization bundles: Rego and data files read from a directory,
//     compiled, packed as an OPA bundle with a manifest and signed in OPA's
//     bundle signature format with the trust domain's ES256 key (see
//     Build and Verify);
//   - the OPA bundle service HTTP API, with ETags, If-None-Match and long
//     polling, so that a stock OPA pulls the bundles (see BundleService).
//
// Bad input (Rego that does not parse or compile, data that is not a JSON
// object, a bundle over its size bound) is an *InvalidError naming the
// file and line; nothing is built from it.
package policy
