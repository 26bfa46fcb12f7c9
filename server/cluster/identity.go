package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/internal/naming"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Identity is a server's TLS identity: its certificate chain and key, and
// the trust domain's roots. Both can be replaced while connections run
// (renewal, root rotation); new handshakes use the new values.
type Identity struct {
	td    spiffeid.TrustDomain
	clock clockwork.Clock
	state atomic.Pointer[identityState]
}

type identityState struct {
	cert  *tls.Certificate
	roots *x509.CertPool
}

// NewIdentity returns an identity for td; Update must be called before use.
// Peer certificates are checked at the clock's time (nil: the real clock).
func NewIdentity(td spiffeid.TrustDomain, clock clockwork.Clock) *Identity {
	if clock == nil {
		clock = clockwork.NewRealClock()
	}
	return &Identity{td: td, clock: clock}
}

// TrustDomain returns the identity's trust domain.
func (i *Identity) TrustDomain() spiffeid.TrustDomain { return i.td }

// Update installs a certificate (leaf first, chain below the root) and the roots.
func (i *Identity) Update(cert *tls.Certificate, roots []*x509.Certificate) error {
	if cert == nil || len(cert.Certificate) == 0 || len(roots) == 0 {
		return errors.New("cluster: identity needs a certificate and roots")
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	i.state.Store(&identityState{cert: cert, roots: pool})
	return nil
}

func (i *Identity) current() (*identityState, error) {
	s := i.state.Load()
	if s == nil {
		return nil, errors.New("cluster: no TLS identity yet")
	}
	return s, nil
}

// VerifyPeer verifies a peer's certificate chain against the roots and
// returns its SPIFFE ID.
func (i *Identity) VerifyPeer(rawCerts [][]byte) (spiffeid.ID, error) {
	s, err := i.current()
	if err != nil {
		return spiffeid.ID{}, err
	}
	if len(rawCerts) == 0 {
		return spiffeid.ID{}, errors.New("cluster: peer presented no certificate")
	}
	certs := make([]*x509.Certificate, len(rawCerts))
	for n, raw := range rawCerts {
		if certs[n], err = x509.ParseCertificate(raw); err != nil {
			return spiffeid.ID{}, fmt.Errorf("cluster: peer certificate: %w", err)
		}
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: s.roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}, CurrentTime: i.clock.Now()}); err != nil {
		return spiffeid.ID{}, fmt.Errorf("cluster: peer certificate does not chain to the trust domain's roots: %w", err)
	}
	id, err := x509svid.IDFromCert(certs[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("cluster: peer certificate: %w", err)
	}
	return id, nil
}

// verifyServer accepts only servers of the trust domain.
func (i *Identity) verifyServer(rawCerts [][]byte, _ [][]*x509.Certificate) error {
	id, err := i.VerifyPeer(rawCerts)
	if err != nil {
		return err
	}
	if !naming.IsServerID(i.td, id) {
		return fmt.Errorf("cluster: peer %s is not a server of %s", id, i.td.Name())
	}
	return nil
}

func (i *Identity) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s, err := i.current()
	if err != nil {
		return nil, err
	}
	return s.cert, nil
}

func (i *Identity) getClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	s, err := i.current()
	if err != nil {
		return nil, err
	}
	return s.cert, nil
}

// PeerTLS is the configuration of server-to-server connections, both ends
// authenticated as servers of the trust domain. Verification is by SPIFFE
// ID, not host name.
func (i *Identity) PeerTLS() (server, client *tls.Config) {
	server = &tls.Config{
		MinVersion:            tls.VersionTLS13,
		Time:                  i.clock.Now,
		GetCertificate:        i.getCertificate,
		ClientAuth:            tls.RequireAnyClientCert,
		VerifyPeerCertificate: i.verifyServer,
	}
	client = &tls.Config{
		MinVersion:            tls.VersionTLS13,
		Time:                  i.clock.Now,
		GetClientCertificate:  i.getClientCertificate,
		InsecureSkipVerify:    true, // verified by verifyServer, by SPIFFE ID
		VerifyPeerCertificate: i.verifyServer,
	}
	return server, client
}

// APIServerTLS is the configuration of the API listener: a client
// certificate is optional (a joining server or an attesting agent has none
// yet), and when given must chain to the roots. Each method then decides
// whom it admits (see PeerID).
func (i *Identity) APIServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		Time:           i.clock.Now,
		GetCertificate: i.getCertificate,
		ClientAuth:     tls.RequestClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return nil
			}
			_, err := i.VerifyPeer(raw)
			return err
		},
	}
}

// AdminServerTLS is the configuration of the operator API over mTLS: a
// client certificate chaining to the roots is required; which IDs may
// call is decided per call.
func (i *Identity) AdminServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		Time:           i.clock.Now,
		GetCertificate: i.getCertificate,
		ClientAuth:     tls.RequireAnyClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, err := i.VerifyPeer(raw)
			return err
		},
	}
}

// JoinClientTLS is the configuration a joining server uses before it has a
// certificate: it authenticates the server it joins through with the
// trust bundle it was given, at the clock's time (nil: the real clock).
func JoinClientTLS(td spiffeid.TrustDomain, roots []*x509.Certificate, clock clockwork.Clock) *tls.Config {
	id := NewIdentity(td, clock)
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	id.state.Store(&identityState{roots: pool})
	return &tls.Config{
		MinVersion:            tls.VersionTLS13,
		Time:                  id.clock.Now,
		InsecureSkipVerify:    true, // verified by verifyServer, by SPIFFE ID
		VerifyPeerCertificate: id.verifyServer,
	}
}
