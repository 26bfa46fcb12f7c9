package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/atomicfile"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/meshca/meshca/server/cluster"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const identityVersion = 1

// identity is what a server keeps on its own disk: the trust domain's roots,
// its own intermediates (keys sealed under the KEK) and its TLS certificate.
type identity struct {
	Version       int                           `json:"version"`
	NodeID        string                        `json:"node_id"`
	TrustDomain   string                        `json:"trust_domain"`
	KEKID         string                        `json:"kek_id"`
	Roots         map[string][]byte             `json:"roots"` // by profile
	Intermediates map[string]*localIntermediate `json:"intermediates"`
	ServerChain   [][]byte                      `json:"server_chain"`
	ServerKey     *ca.SealedKey                 `json:"server_key"`
}

type localIntermediate struct {
	Certificate []byte        `json:"certificate"`
	Key         *ca.SealedKey `json:"key"`
}

func identityPath(dataDir string) string { return filepath.Join(dataDir, "server", "identity.json") }

// HasIdentity reports whether dataDir holds a server identity, made by
// bootstrapping or joining: such a server starts with neither.
func HasIdentity(dataDir string) (bool, error) {
	_, err := os.Stat(identityPath(dataDir))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("server identity: %w", err)
}

// loadIdentity reads the identity; (nil, nil) if there is none yet.
func loadIdentity(dataDir string, kek *ca.KEK) (*identity, error) {
	b, err := os.ReadFile(identityPath(dataDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read server identity: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var id identity
	if err := dec.Decode(&id); err != nil {
		return nil, fmt.Errorf("server identity %s is corrupt: %w", identityPath(dataDir), err)
	}
	if id.Version != identityVersion {
		return nil, fmt.Errorf("server identity %s has version %d; this meshca reads version %d", identityPath(dataDir), id.Version, identityVersion)
	}
	if id.KEKID != kek.ID() {
		return nil, fmt.Errorf("%w: %s was sealed under KEK %s, the given KEK is %s", ca.ErrWrongKEK, dataDir, id.KEKID, kek.ID())
	}
	return &id, nil
}

func (id *identity) save(dataDir string) error {
	if err := os.MkdirAll(filepath.Dir(identityPath(dataDir)), 0o700); err != nil {
		return fmt.Errorf("save server identity: %w", err)
	}
	b, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return fmt.Errorf("save server identity: %w", err)
	}
	return atomicfile.Write(identityPath(dataDir), b, 0o600)
}

func (id *identity) trustDomain() (spiffeid.TrustDomain, error) {
	return spiffeid.TrustDomainFromString(id.TrustDomain)
}

// x509Roots returns the roots crypto/x509 can use for TLS: the ECDSA ones.
func (id *identity) x509Roots() []*x509.Certificate {
	c, err := x509.ParseCertificate(id.Roots[ca.ProfileECDSA])
	if err != nil {
		return nil
	}
	return []*x509.Certificate{c}
}

// authority opens the server's own intermediate of a profile.
func (id *identity) authority(profile string, kek *ca.KEK, clock clockwork.Clock) (*ca.Authority, error) {
	p, err := ca.ProfileByName(profile)
	if err != nil {
		return nil, err
	}
	li := id.Intermediates[profile]
	if li == nil {
		return nil, fmt.Errorf("server has no %s intermediate", profile)
	}
	cert, err := p.ParseCertificate(li.Certificate)
	if err != nil {
		return nil, err
	}
	key, err := li.Key.Open(kek)
	if err != nil {
		return nil, err
	}
	td, err := id.trustDomain()
	if err != nil {
		return nil, err
	}
	return ca.NewAuthority(ca.AuthorityConfig{Profile: p, TrustDomain: td, Certificate: cert, Signer: key, Clock: clock})
}

// issueServerCertificate (re)issues the server's TLS certificate from its
// own ECDSA intermediate.
func (id *identity) issueServerCertificate(kek *ca.KEK, clock clockwork.Clock) error {
	a, err := id.authority(ca.ProfileECDSA, kek, clock)
	if err != nil {
		return err
	}
	td, err := id.trustDomain()
	if err != nil {
		return err
	}
	sid, err := cluster.ServerID(td, id.NodeID)
	if err != nil {
		return err
	}
	key, err := ca.ECDSA.GenerateKey()
	if err != nil {
		return err
	}
	csr, err := ca.ECDSA.CreateCSR(key)
	if err != nil {
		return err
	}
	svid, err := a.SignX509SVID(context.Background(), ca.X509SVIDParams{CSR: csr, SPIFFEID: sid.String(), TTL: ServerCertTTL})
	if err != nil {
		return fmt.Errorf("issue server certificate: %w", err)
	}
	sealed, err := ca.SealKey(kek, ca.ECDSA, "server/tls", key)
	if err != nil {
		return err
	}
	id.ServerChain, id.ServerKey = svid.Certificates, sealed
	return nil
}

// ServerCertTTL is the lifetime of a server's TLS certificate; it is renewed
// at half-life.
const ServerCertTTL = 24 * time.Hour

// tlsCertificate returns the server's TLS certificate and its NotAfter.
func (id *identity) tlsCertificate(kek *ca.KEK) (*tls.Certificate, time.Time, time.Time, error) {
	key, err := id.ServerKey.Open(kek)
	if err != nil {
		return nil, time.Time{}, time.Time{}, err
	}
	leaf, err := x509.ParseCertificate(id.ServerChain[0])
	if err != nil {
		return nil, time.Time{}, time.Time{}, fmt.Errorf("server certificate: %w", err)
	}
	return &tls.Certificate{Certificate: id.ServerChain, PrivateKey: key, Leaf: leaf}, leaf.NotBefore, leaf.NotAfter, nil
}

// bootstrapMaterial is what the first server creates and later proposes
// into the replicated state: the roots with their sealed keys.
type bootstrapMaterial struct {
	roots  map[string]rootMaterial
	jwtKey *raftpb.JWTKey
}

type rootMaterial struct {
	cert *ca.Certificate
	key  *ca.SealedKey
}

// newBootstrapIdentity creates the trust domain's roots, this server's
// intermediates and its server certificate.
func newBootstrapIdentity(cfg *Config, td spiffeid.TrustDomain) (*identity, *bootstrapMaterial, error) {
	now := cfg.Clock.Now()
	id := &identity{Version: identityVersion, NodeID: cfg.NodeID, TrustDomain: td.Name(), KEKID: cfg.KEK.ID(),
		Roots: map[string][]byte{}, Intermediates: map[string]*localIntermediate{}}
	bm := &bootstrapMaterial{roots: map[string]rootMaterial{}}
	for _, p := range ca.Profiles() {
		root, rootKey, err := ca.NewRoot(ca.CAParams{Profile: p, TrustDomain: td, Name: "root", Now: now})
		if err != nil {
			return nil, nil, err
		}
		sealedRoot, err := ca.SealKey(cfg.KEK, p, p.Name()+"/root", rootKey)
		if err != nil {
			return nil, nil, err
		}
		bm.roots[p.Name()] = rootMaterial{cert: root, key: sealedRoot}
		id.Roots[p.Name()] = root.Raw
		key, err := p.GenerateKey()
		if err != nil {
			return nil, nil, err
		}
		csr, err := p.CreateCSR(key)
		if err != nil {
			return nil, nil, err
		}
		inter, err := ca.SignIntermediateCSR(ca.CAParams{Profile: p, TrustDomain: td, Name: "intermediate " + cfg.NodeID, Now: now}, csr, root, rootKey)
		if err != nil {
			return nil, nil, err
		}
		sealed, err := ca.SealKey(cfg.KEK, p, p.Name()+"/intermediate", key)
		if err != nil {
			return nil, nil, err
		}
		id.Intermediates[p.Name()] = &localIntermediate{Certificate: inter.Raw, Key: sealed}
	}
	if err := id.issueServerCertificate(cfg.KEK, cfg.Clock); err != nil {
		return nil, nil, err
	}
	var err error
	if bm.jwtKey, err = newJWTKey(cfg.KEK, now); err != nil {
		return nil, nil, err
	}
	return id, bm, nil
}
