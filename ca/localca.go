package ca

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/meshca/meshca/internal/atomicfile"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sys/unix"
)

// ErrDataDirLocked means another process holds the data directory.
var ErrDataDirLocked = errors.New("ca: data directory is in use by another meshca process")

const localStateVersion = 1

// LocalCA is a trust domain's CA hierarchy, one root and one active
// intermediate per profile, kept in a state file under a data directory with
// every private key sealed under a KEK. It backs `meshca dev` and the offline
// `meshca x509 mint`; servers keep the same material in Raft.
//
// A LocalCA holds an exclusive lock on its directory until Close.
type LocalCA struct {
	dir     string
	kek     *KEK
	td      spiffeid.TrustDomain
	clock   clockwork.Clock
	lock    *os.File
	created bool
	rotated []string

	state   localState
	roots   map[string]*Authority
	issuers map[string]*Authority
}

// LocalConfig configures OpenLocal.
type LocalConfig struct {
	// Dir is the data directory; the state lives in Dir/ca/state.json.
	Dir string
	// KEK seals and opens the private keys.
	KEK *KEK
	// TrustDomain is required to create a new hierarchy; when reopening, a
	// non-zero value must match the stored one.
	TrustDomain spiffeid.TrustDomain
	// Clock is the time source of lifetimes and rotation; nil means the real clock.
	Clock clockwork.Clock
	// RootTTL and IntermediateTTL default to DefaultRootTTL and DefaultIntermediateTTL.
	RootTTL, IntermediateTTL time.Duration
}

type localState struct {
	Version        int                      `json:"version"`
	TrustDomain    string                   `json:"trust_domain"`
	KEKID          string                   `json:"kek_id"`
	BundleSequence uint64                   `json:"bundle_sequence"`
	Profiles       map[string]*localProfile `json:"profiles"`
}

type localProfile struct {
	Root         localAuthority `json:"root"`
	Intermediate localAuthority `json:"intermediate"`
}

type localAuthority struct {
	Certificate []byte     `json:"certificate"`
	Key         *SealedKey `json:"key"`
	CRLNumber   uint64     `json:"crl_number"`
}

// OpenLocal opens the hierarchy in c.Dir, creating it (both profiles) if the
// directory holds none. An intermediate past half of its lifetime is
// replaced by a new one. A KEK other than the one the keys are sealed under
// gives ErrWrongKEK and changes nothing.
func OpenLocal(c LocalConfig) (*LocalCA, error) {
	if c.Dir == "" || c.KEK == nil {
		return nil, errors.New("ca: local CA needs a data directory and a key-encryption key")
	}
	l := &LocalCA{dir: filepath.Join(c.Dir, "ca"), kek: c.KEK, clock: c.Clock, roots: map[string]*Authority{}, issuers: map[string]*Authority{}}
	if l.clock == nil {
		l.clock = clockwork.NewRealClock()
	}
	if err := os.MkdirAll(l.dir, 0o700); err != nil {
		return nil, fmt.Errorf("ca: data directory: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(l.dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("ca: data directory: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("%w: %s", ErrDataDirLocked, c.Dir)
	}
	l.lock = lock
	if err := l.load(c); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func (l *LocalCA) statePath() string { return filepath.Join(l.dir, "state.json") }

// LocalExists reports whether dir holds a local CA hierarchy.
func LocalExists(dir string) (bool, error) {
	_, err := os.Stat(filepath.Join(dir, "ca", "state.json"))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("ca: data directory %s: %w", dir, err)
}

func (l *LocalCA) load(c LocalConfig) error {
	b, err := os.ReadFile(l.statePath())
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if c.TrustDomain.IsZero() {
			return errors.New("ca: a new data directory needs a trust domain")
		}
		l.created = true
		l.state = localState{Version: localStateVersion, TrustDomain: c.TrustDomain.Name(), KEKID: l.kek.ID(), Profiles: map[string]*localProfile{}}
	case err != nil:
		return fmt.Errorf("ca: read state: %w", err)
	default:
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&l.state); err != nil {
			return fmt.Errorf("ca: state file %s is corrupt: %w", l.statePath(), err)
		}
		if l.state.Version != localStateVersion {
			return fmt.Errorf("ca: state file %s has version %d; this meshca reads version %d", l.statePath(), l.state.Version, localStateVersion)
		}
		if l.state.KEKID != l.kek.ID() {
			return fmt.Errorf("%w: %s was sealed under KEK %s, the given KEK is %s", ErrWrongKEK, c.Dir, l.state.KEKID, l.kek.ID())
		}
		if !c.TrustDomain.IsZero() && c.TrustDomain.Name() != l.state.TrustDomain {
			return fmt.Errorf("ca: data directory %s belongs to trust domain %q, not %q", c.Dir, l.state.TrustDomain, c.TrustDomain.Name())
		}
	}
	td, err := spiffeid.TrustDomainFromString(l.state.TrustDomain)
	if err != nil {
		return fmt.Errorf("ca: state file: trust domain: %w", err)
	}
	l.td = td
	dirty := l.created
	now := l.clock.Now()
	for _, p := range Profiles() {
		changed, err := l.loadProfile(p, now, c)
		if err != nil {
			return err
		}
		dirty = dirty || changed
	}
	if dirty {
		l.state.BundleSequence++
		return l.save()
	}
	return nil
}

// loadProfile opens (or creates) one profile's root and intermediate.
func (l *LocalCA) loadProfile(p Profile, now time.Time, c LocalConfig) (changed bool, err error) {
	ps := l.state.Profiles[p.Name()]
	params := CAParams{Profile: p, TrustDomain: l.td, Now: now}
	if ps == nil {
		params.Name, params.TTL = "root", c.RootTTL
		cert, key, err := NewRoot(params)
		if err != nil {
			return false, err
		}
		sk, err := SealKey(l.kek, p, p.Name()+"/root", key)
		if err != nil {
			return false, err
		}
		ps = &localProfile{Root: localAuthority{Certificate: cert.Raw, Key: sk}}
		l.state.Profiles[p.Name()] = ps
		changed = true
	}
	root, err := l.openAuthority(p, &ps.Root, nil)
	if err != nil {
		return false, err
	}
	l.roots[p.Name()] = root
	if ps.Intermediate.Certificate != nil {
		inter, err := l.openAuthority(p, &ps.Intermediate, nil)
		if err != nil {
			return false, err
		}
		ic := inter.Certificate()
		if now.Before(ic.NotBefore.Add(ic.NotAfter.Sub(ic.NotBefore) / 2)) {
			l.issuers[p.Name()] = inter
			return changed, nil
		}
		l.rotated = append(l.rotated, fmt.Sprintf("%s intermediate %x passed half of its lifetime (expires %s); replaced", p.Name(), ic.SerialNumber, ic.NotAfter.UTC().Format(time.RFC3339)))
	}
	params.Name, params.TTL = "intermediate", c.IntermediateTTL
	cert, key, err := NewIntermediate(params, root.Certificate(), root.signer)
	if err != nil {
		return false, err
	}
	sk, err := SealKey(l.kek, p, p.Name()+"/intermediate", key)
	if err != nil {
		return false, err
	}
	ps.Intermediate = localAuthority{Certificate: cert.Raw, Key: sk}
	inter, err := l.openAuthority(p, &ps.Intermediate, nil)
	if err != nil {
		return false, err
	}
	l.issuers[p.Name()] = inter
	return true, nil
}

func (l *LocalCA) openAuthority(p Profile, la *localAuthority, upstream []*Certificate) (*Authority, error) {
	if la.Key == nil {
		return nil, fmt.Errorf("ca: state file %s: an authority has no key", l.statePath())
	}
	cert, err := p.ParseCertificate(la.Certificate)
	if err != nil {
		return nil, fmt.Errorf("ca: state file %s: %w", l.statePath(), err)
	}
	signer, err := la.Key.Open(l.kek)
	if err != nil {
		return nil, err
	}
	return NewAuthority(AuthorityConfig{Profile: p, TrustDomain: l.td, Certificate: cert, Signer: signer, Upstream: upstream, Clock: l.clock})
}

// save writes the state file atomically and durably.
func (l *LocalCA) save() error {
	b, err := json.MarshalIndent(&l.state, "", "  ")
	if err != nil {
		return fmt.Errorf("ca: encode state: %w", err)
	}
	return atomicfile.Write(l.statePath(), b, 0o600)
}

// Close releases the data directory.
func (l *LocalCA) Close() error {
	if l.lock == nil {
		return nil
	}
	err := l.lock.Close() // closing the descriptor releases the flock
	l.lock = nil
	return err
}

// TrustDomain returns the hierarchy's trust domain.
func (l *LocalCA) TrustDomain() spiffeid.TrustDomain { return l.td }

// Created reports whether OpenLocal created the hierarchy.
func (l *LocalCA) Created() bool { return l.created }

// Rotations describes the intermediates OpenLocal replaced, if any.
func (l *LocalCA) Rotations() []string { return l.rotated }

// Issuer returns the active intermediate of a profile, which signs X509-SVIDs.
func (l *LocalCA) Issuer(profile string) (*Authority, error) {
	return lookupAuthority(l.issuers, profile, "intermediate")
}

// Root returns the root authority of a profile, which signs intermediates
// and their CRL.
func (l *LocalCA) Root(profile string) (*Authority, error) {
	return lookupAuthority(l.roots, profile, "root")
}

func lookupAuthority(m map[string]*Authority, profile, role string) (*Authority, error) {
	if a, ok := m[profile]; ok {
		return a, nil
	}
	if _, err := ProfileByName(profile); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("ca: no %s %s", profile, role)
}

// Bundle returns the roots of every profile.
func (l *LocalCA) Bundle() *Bundle {
	b := &Bundle{TrustDomain: l.td, Sequence: l.state.BundleSequence}
	for _, p := range Profiles() {
		if r, ok := l.roots[p.Name()]; ok {
			b.Roots = append(b.Roots, r.Certificate())
		}
	}
	return b
}

// NextCRL signs a CRL for a profile's intermediate (root == false) or root
// (root == true) with the next CRL number, recorded durably before the CRL
// is returned so numbers never repeat.
func (l *LocalCA) NextCRL(profile string, root bool, revoked []Revocation) ([]byte, error) {
	ps, ok := l.state.Profiles[profile]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownProfile, profile)
	}
	la, a := &ps.Intermediate, l.issuers[profile]
	if root {
		la, a = &ps.Root, l.roots[profile]
	}
	la.CRLNumber++
	if err := l.save(); err != nil {
		la.CRLNumber--
		return nil, err
	}
	return a.CreateCRL(CRLParams{Number: new(big.Int).SetUint64(la.CRLNumber), Revoked: revoked})
}
