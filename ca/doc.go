// Package ca is meshca's certificate authority core.
//
// It owns the signature profiles (ecdsa: P-256 with ECDSA-SHA256; sm2: SM2 with
// SM2-with-SM3 and the GM/T default signer ID 1234567812345678), the
// root/intermediate hierarchy of each profile, key custody behind
// crypto.Signer with keys sealed at rest under a key-encryption key, X509-SVID
// issuance from PKCS#10 CSRs, trust bundles (PEM and SPIFFE JWKS) and CRLs.
//
// The package does no I/O besides its key store (LocalCA's state file and the
// KEK file) and knows nothing of Raft or gRPC: callers decide who is allowed to
// get which identity and pass the authorized SPIFFE ID in X509SVIDParams. The
// identity is never taken from the CSR.
//
// Issuance (Authority.SignX509SVID) is the hot path. It verifies the CSR's
// signature once, encodes the leaf's TBSCertificate directly and signs it
// once, so its cost is close to the raw crypto (one verify plus one sign).
// x509.CreateCertificate would add a second verify of its own signature; the
// tests guard the direct encoding by comparing it byte for byte with what
// CreateCertificate produces for the same template, and by verifying every
// chain with openssl, go-spiffe and zlint.
//
// The ECDSA hierarchy's CAs are created and certified, and its sealed keys
// opened, through smallstep's CAS and KMS abstractions, which package
// ca/stepcas links in and registers when imported. Servers and the meshca
// command import it; programs that only handle workloads' keys and
// certificates (the node agent) do not, and get ErrNoECDSACAService if
// they try to create an ECDSA CA.
package ca
