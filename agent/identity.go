package agent

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/atomicfile"
	"github.com/meshca/meshca/internal/naming"
	"github.com/meshca/meshca/proto/nodepb"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// identity is the agent's own SVID and the trust bundle. It is a go-spiffe
// X.509 SVID and bundle source for the TLS configurations.
type identity struct {
	td    spiffeid.TrustDomain
	dir   string
	clock clockwork.Clock

	mu      sync.RWMutex
	svid    *x509svid.SVID
	renewAt time.Time
	// replacing is set once the SVID was found compromised (renewBy).
	replacing bool
	bundle    *x509bundle.Bundle
	roots     []*nodepb.Root // every profile's roots, from the server
}

func newIdentity(td spiffeid.TrustDomain, dir string, roots []*x509.Certificate, clock clockwork.Clock) *identity {
	return &identity{td: td, dir: filepath.Join(dir, "agent"), clock: clock, bundle: x509bundle.FromX509Authorities(td, roots)}
}

func (i *identity) GetX509SVID() (*x509svid.SVID, error) {
	i.mu.RLock()
	defer i.mu.RUnlock()
	if i.svid == nil {
		return nil, errors.New("agent: not attested yet")
	}
	return i.svid, nil
}

func (i *identity) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != i.td {
		return nil, fmt.Errorf("agent: no bundle for trust domain %s", td)
	}
	i.mu.RLock()
	defer i.mu.RUnlock()
	return i.bundle, nil
}

// verifyServer accepts only servers of the trust domain, with an X509-SVID
// valid at the clock's time for the current bundle.
func (i *identity) verifyServer(raw [][]byte, _ [][]*x509.Certificate) error {
	id, _, err := x509svid.ParseAndVerify(raw, i, x509svid.WithTime(i.clock.Now()))
	if err != nil {
		return fmt.Errorf("agent: server certificate: %w", err)
	}
	if !naming.IsServerID(i.td, id) {
		return fmt.Errorf("agent: %s is not a server of %s", id, i.td.Name())
	}
	return nil
}

// attestTLS authenticates the server before the agent has an SVID.
func (i *identity) attestTLS() *tls.Config {
	return &tls.Config{
		MinVersion:            tls.VersionTLS13,
		Time:                  i.clock.Now,
		InsecureSkipVerify:    true, // verified by verifyServer, by SPIFFE ID
		VerifyPeerCertificate: i.verifyServer,
	}
}

// mTLS presents the agent's SVID and authenticates the server.
func (i *identity) mTLS() *tls.Config {
	c := i.attestTLS()
	c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		s, err := i.GetX509SVID()
		if err != nil {
			return nil, err
		}
		cert := &tls.Certificate{PrivateKey: s.PrivateKey, Leaf: s.Certificates[0]}
		for _, c := range s.Certificates {
			cert.Certificate = append(cert.Certificate, c.Raw)
		}
		return cert, nil
	}
	return c
}

// setBundle installs the roots the server sent (ECDSA ones authenticate servers).
func (i *identity) setBundle(b *nodepb.Bundle) error {
	var ecdsaRoots []*x509.Certificate
	for _, r := range b.GetRoots() {
		if r.Profile != ca.ProfileECDSA {
			continue
		}
		c, err := x509.ParseCertificate(r.Certificate)
		if err != nil {
			return fmt.Errorf("agent: bundle root: %w", err)
		}
		ecdsaRoots = append(ecdsaRoots, c)
	}
	if len(ecdsaRoots) == 0 {
		return errors.New("agent: the server's bundle holds no ECDSA root")
	}
	i.mu.Lock()
	i.bundle = x509bundle.FromX509Authorities(i.td, ecdsaRoots)
	i.roots = b.GetRoots()
	i.mu.Unlock()
	return atomicfile.Write(filepath.Join(i.dir, "bundle.pem"), pemCerts(ecdsaRoots), 0o644)
}

// rootsOf returns the DER roots of a profile.
func (i *identity) rootsOf(profile string) [][]byte {
	i.mu.RLock()
	defer i.mu.RUnlock()
	var out [][]byte
	for _, r := range i.roots {
		if r.Profile == profile {
			out = append(out, r.Certificate)
		}
	}
	return out
}

func pemCerts(certs []*x509.Certificate) []byte {
	ders := make([][]byte, len(certs))
	for n, c := range certs {
		ders[n] = c.Raw
	}
	return ca.EncodePEM(ders...)
}

// setSVID installs and persists the agent's SVID: chain (DER, leaf first)
// and key. The key file is mode 0600 in a 0700 directory.
func (i *identity) setSVID(chain [][]byte, key crypto.Signer, now time.Time, fraction float64) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	defer clear(keyDER)
	var raw []byte
	for _, c := range chain {
		raw = append(raw, c...)
	}
	svid, err := x509svid.ParseRaw(raw, keyDER)
	if err != nil {
		return fmt.Errorf("agent: the server's SVID for this agent: %w", err)
	}
	if err := os.MkdirAll(i.dir, 0o700); err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(i.dir, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(i.dir, "svid.pem"), ca.EncodePEM(chain...), 0o644); err != nil {
		return err
	}
	i.mu.Lock()
	i.svid, i.replacing = svid, false
	i.renewAt = renewTime(issuedAt(now, svid.Certificates[0].NotBefore), svid.Certificates[0].NotAfter, fraction)
	i.mu.Unlock()
	return nil
}

// load reads a persisted SVID; false if there is none (or it expired).
func (i *identity) load(now time.Time, fraction float64) (bool, error) {
	certPEM, err := os.ReadFile(filepath.Join(i.dir, "svid.pem"))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(i.dir, "key.pem"))
	if err != nil {
		return false, err
	}
	defer clear(keyPEM)
	svid, err := x509svid.Parse(certPEM, keyPEM)
	if err != nil {
		return false, fmt.Errorf("agent: stored SVID in %s: %w", i.dir, err)
	}
	if !now.Before(svid.Certificates[0].NotAfter) {
		return false, nil // expired: attest again
	}
	if b, err := os.ReadFile(filepath.Join(i.dir, "bundle.pem")); err == nil {
		if roots, err := ca.ParseCertificatesPEM(b); err == nil {
			i.bundle = x509bundle.FromX509Authorities(i.td, roots)
		}
	}
	i.mu.Lock()
	i.svid = svid
	// Issued at an unknown time: count from NotBefore, which renews early.
	i.renewAt = renewTime(svid.Certificates[0].NotBefore, svid.Certificates[0].NotAfter, fraction)
	i.mu.Unlock()
	return true, nil
}

func (i *identity) attemptPath() string { return filepath.Join(i.dir, "attempt") }

// attemptID returns the ID of this node's attestation attempt, made and
// saved the first time: an agent whose attestation answer was lost (the
// server failed over, the agent crashed) presents it again with the same
// single-use token and is admitted again.
func (i *identity) attemptID() (string, error) {
	b, err := os.ReadFile(i.attemptPath())
	if err == nil && len(b) > 0 && len(b) <= 64 {
		return string(b), nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("agent: attestation attempt: %w", err)
	}
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	id := hex.EncodeToString(raw[:])
	if err := atomicfile.Write(i.attemptPath(), []byte(id), 0o600); err != nil {
		return "", fmt.Errorf("agent: attestation attempt: %w", err)
	}
	return id, nil
}

// current returns the agent's SVID chain (DER, leaf first) and serial,
// and whether its renewal was already moved forward.
func (i *identity) current() ([][]byte, *big.Int, bool) {
	i.mu.RLock()
	defer i.mu.RUnlock()
	if i.svid == nil {
		return nil, nil, false
	}
	var chain [][]byte
	for _, c := range i.svid.Certificates {
		chain = append(chain, c.Raw)
	}
	return chain, i.svid.Certificates[0].SerialNumber, i.replacing
}

// renewBy moves the renewal of the agent's SVID to t at the latest, once
// per SVID (a new SVID clears it).
func (i *identity) renewBy(t time.Time) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.replacing = true
	if t.Before(i.renewAt) {
		i.renewAt = t
	}
}

// renewTime is when the agent's SVID should be renewed.
func (i *identity) renewTime() time.Time {
	i.mu.RLock()
	defer i.mu.RUnlock()
	return i.renewAt
}

// agentKey makes the agent's key and CSR (ECDSA P-256).
func agentKey() (crypto.Signer, []byte, error) {
	key, err := ca.ECDSA.GenerateKey()
	if err != nil {
		return nil, nil, err
	}
	csr, err := ca.ECDSA.CreateCSR(key)
	return key, csr, err
}

// attestNode proves the node's identity to a server and stores the SVID.
func (a *Agent) attestNode(ctx context.Context, client nodepb.NodeClient) error {
	if a.cfg.Evidence == nil {
		return errors.New("agent: no stored SVID and no attestation evidence (give a join token)")
	}
	payload, err := a.cfg.Evidence.Payload()
	if err != nil {
		return fmt.Errorf("agent: attestation evidence: %w", err)
	}
	key, csr, err := agentKey()
	if err != nil {
		return err
	}
	attempt, err := a.id.attemptID()
	if err != nil {
		return err
	}
	stream, err := client.Attest(ctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&nodepb.AttestRequest{Step: &nodepb.AttestRequest_Start{Start: &nodepb.AttestStart{
		Attestor: a.cfg.Evidence.Name(), Payload: payload, Csr: csr, AttemptId: attempt}}}); err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			switch status.Code(err) {
			case codes.PermissionDenied, codes.InvalidArgument:
				return fmt.Errorf("%w: %s", ErrAttestationRefused, status.Convert(err).Message())
			}
			return fmt.Errorf("agent: attestation: %w", err)
		}
		if c := resp.GetChallenge(); c != nil {
			answer, err := a.cfg.Evidence.Respond(c)
			if err != nil {
				return fmt.Errorf("agent: attestation challenge: %w", err)
			}
			if err := stream.Send(&nodepb.AttestRequest{Step: &nodepb.AttestRequest_ChallengeResponse{ChallengeResponse: answer}}); err != nil {
				return err
			}
			continue
		}
		res := resp.GetResult()
		if res == nil {
			return errors.New("agent: attestation: empty answer")
		}
		stream.CloseSend()
		if err := a.id.setSVID(res.SvidChain, key, a.cfg.Clock.Now(), a.cfg.RenewFraction); err != nil {
			return err
		}
		if err := a.id.setBundle(res.Bundle); err != nil {
			return err
		}
		if err := os.Remove(a.id.attemptPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("agent: %w", err)
		}
		a.log.Info("node attested", "agent_id", res.AgentId, "attestor", a.cfg.Evidence.Name())
		return nil
	}
}
