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
	_ "github.com/meshca/meshca/ca/stepcas" // the ECDSA hierarchy: roots and intermediates are made here
	"github.com/meshca/meshca/internal/atomicfile"
	"github.com/meshca/meshca/internal/naming"
	"github.com/meshca/meshca/proto/raftpb"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/encoding/protojson"
)

// identityVersion is the version of identity.json this server writes; it
// reads versions 1 to 3 (1 had no prepared, old or bootstrap fields, 2 no
// peer roots).
const identityVersion = 3

// identity is what a server keeps on its own disk: the trust domain's roots,
// its own intermediates (keys sealed under the KEK: the active one, the
// prepared successor and the old ones until they expire) and its TLS
// certificate. It is written atomically after every change, before the
// change is proposed to the cluster, so that no key the cluster knows of is
// lost in a crash.
type identity struct {
	Version     int               `json:"version"`
	NodeID      string            `json:"node_id"`
	TrustDomain string            `json:"trust_domain"`
	KEKID       string            `json:"kek_id"`
	Roots       map[string][]byte `json:"roots"` // by profile
	// RootKeys are the roots' keys, sealed as in the replicated state. A
	// server whose intermediate expired while it was down (so that it can
	// no longer authenticate to its peers) certifies a new one with them.
	RootKeys map[string]*ca.SealedKey `json:"root_keys,omitempty"`
	// PeerRoots are the ECDSA roots of the trust bundle as this server
	// last saw them (issue 13 roots: prepared, active, old and tainted
	// ones): a restarted server trusts its peers' certificates with them
	// before its state is replayed, whichever root certified them.
	PeerRoots [][]byte `json:"peer_roots,omitempty"`
	// Intermediates are the active intermediates, by profile.
	Intermediates map[string]*localIntermediate `json:"intermediates"`
	// Prepared are the successors, by profile: certified and recorded as
	// PREPARED, or, while Certificate is empty, a key awaiting its
	// certificate.
	Prepared map[string]*localIntermediate `json:"prepared,omitempty"`
	// Old are the intermediates that signed before the active ones, kept
	// until they expire (the chains they signed are still in use).
	Old         map[string][]*localIntermediate `json:"old,omitempty"`
	ServerChain [][]byte                        `json:"server_chain"`
	ServerKey   *ca.SealedKey                   `json:"server_key"`
	// Bootstrap is what a server that formed the cluster must still write
	// into the replicated state; nil once written. A first start
	// interrupted at any point finishes from it.
	Bootstrap *pendingBootstrap `json:"bootstrap,omitempty"`
}

// pendingBootstrap is the part of a new cluster's state that exists only on
// the bootstrapping server until it is committed.
type pendingBootstrap struct {
	CreatedUnixNano int64 `json:"created_unix_nano"`
	// JWTKey is the first JWT signing key, a JSON raftpb.JWTKey (sealed).
	JWTKey []byte `json:"jwt_key"`
}

// localIntermediate is an intermediate whose key this server holds.
type localIntermediate struct {
	Certificate []byte        `json:"certificate,omitempty"`
	Key         *ca.SealedKey `json:"key"`
}

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
	if id.Version < 1 || id.Version > identityVersion {
		return nil, fmt.Errorf("server identity %s has version %d; this meshca reads versions 1 to %d", identityPath(dataDir), id.Version, identityVersion)
	}
	if id.Prepared == nil {
		id.Prepared = map[string]*localIntermediate{}
	}
	if id.Old == nil {
		id.Old = map[string][]*localIntermediate{}
	}
	if id.RootKeys == nil {
		id.RootKeys = map[string]*ca.SealedKey{}
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
	id.Version = identityVersion
	b, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return fmt.Errorf("save server identity: %w", err)
	}
	return atomicfile.Write(identityPath(dataDir), b, 0o600)
}

func (id *identity) trustDomain() (spiffeid.TrustDomain, error) {
	return spiffeid.TrustDomainFromString(id.TrustDomain)
}

// openIntermediate opens an intermediate of a profile as an authority.
func (id *identity) openIntermediate(li *localIntermediate, profile string, kek *ca.KEK, clock clockwork.Clock) (*ca.Authority, error) {
	p, err := ca.ProfileByName(profile)
	if err != nil {
		return nil, err
	}
	if li == nil || len(li.Certificate) == 0 {
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

// authority opens the server's active intermediate of a profile.
func (id *identity) authority(profile string, kek *ca.KEK, clock clockwork.Clock) (*ca.Authority, error) {
	return id.openIntermediate(id.Intermediates[profile], profile, kek, clock)
}

// issuers opens the active intermediates of every profile.
func (id *identity) issuers(kek *ca.KEK, clock clockwork.Clock) (*issuerSet, error) {
	set := &issuerSet{byProfile: map[string]*issuer{}}
	for _, p := range ca.Profiles() {
		a, err := id.authority(p.Name(), kek, clock)
		if err != nil {
			return nil, err
		}
		set.byProfile[p.Name()] = newIssuer(a)
	}
	return set, nil
}

// validity returns the validity of a local intermediate, zero if it has no
// certificate (none, or a key awaiting one).
func validity(li *localIntermediate, profile string) ca.Validity {
	if li == nil || len(li.Certificate) == 0 {
		return ca.Validity{}
	}
	p, err := ca.ProfileByName(profile)
	if err != nil {
		return ca.Validity{}
	}
	c, err := p.ParseCertificate(li.Certificate)
	if err != nil {
		return ca.Validity{}
	}
	return ca.ValidityOf(c)
}

// issueServerCertificate (re)issues the server's TLS certificate from the
// ECDSA intermediate a.
func (id *identity) issueServerCertificate(kek *ca.KEK, a *ca.Authority) error {
	td, err := id.trustDomain()
	if err != nil {
		return err
	}
	sid, err := naming.ServerID(td, id.NodeID)
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
// at half-life, and at once when the ECDSA intermediate rotates.
const ServerCertTTL = 24 * time.Hour

// tlsCertificate returns the server's TLS certificate and its validity.
func (id *identity) tlsCertificate(kek *ca.KEK) (*tls.Certificate, time.Time, time.Time, error) {
	if len(id.ServerChain) == 0 || id.ServerKey == nil {
		return nil, time.Time{}, time.Time{}, errors.New("server has no TLS certificate")
	}
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

// newBootstrapIdentity creates the trust domain's roots, this server's
// intermediates and its server certificate, and the first JWT key, all in
// the identity: saved before anything else happens, it lets a restart
// finish an interrupted bootstrap.
func newBootstrapIdentity(cfg *Config, td spiffeid.TrustDomain) (*identity, error) {
	now := cfg.Clock.Now()
	id := &identity{Version: identityVersion, NodeID: cfg.NodeID, TrustDomain: td.Name(), KEKID: cfg.KEK.ID(),
		Roots: map[string][]byte{}, RootKeys: map[string]*ca.SealedKey{}, Intermediates: map[string]*localIntermediate{},
		Prepared: map[string]*localIntermediate{}, Old: map[string][]*localIntermediate{}}
	for _, p := range ca.Profiles() {
		root, rootKey, err := ca.NewRoot(ca.CAParams{Profile: p, TrustDomain: td, Name: "root", Now: now})
		if err != nil {
			return nil, err
		}
		if id.RootKeys[p.Name()], err = ca.SealKey(cfg.KEK, p, p.Name()+"/root", rootKey); err != nil {
			return nil, err
		}
		id.Roots[p.Name()] = root.Raw
		key, err := p.GenerateKey()
		if err != nil {
			return nil, err
		}
		csr, err := p.CreateCSR(key)
		if err != nil {
			return nil, err
		}
		inter, err := ca.SignIntermediateCSR(ca.CAParams{Profile: p, TrustDomain: td, Name: "intermediate " + cfg.NodeID, Now: now, TTL: cfg.IntermediateTTL}, csr, root, rootKey)
		if err != nil {
			return nil, err
		}
		sealed, err := ca.SealKey(cfg.KEK, p, p.Name()+"/intermediate", key)
		if err != nil {
			return nil, err
		}
		id.Intermediates[p.Name()] = &localIntermediate{Certificate: inter.Raw, Key: sealed}
	}
	a, err := id.authority(ca.ProfileECDSA, cfg.KEK, cfg.Clock)
	if err != nil {
		return nil, err
	}
	if err := id.issueServerCertificate(cfg.KEK, a); err != nil {
		return nil, err
	}
	jwtKey, err := newJWTKey(cfg.KEK, now, raftpb.AuthorityState_ACTIVE)
	if err != nil {
		return nil, err
	}
	b, err := protojson.Marshal(jwtKey)
	if err != nil {
		return nil, err
	}
	id.Bootstrap = &pendingBootstrap{CreatedUnixNano: now.UnixNano(), JWTKey: b}
	return id, nil
}
