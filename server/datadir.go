package server

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/atomicfile"
	"github.com/meshca/meshca/internal/dirlock"
	"github.com/meshca/meshca/store"
)

// The names in a server's data directory; see "Data directory" in the
// package documentation.
const (
	// AdminSocketName is the name of the default operator socket.
	AdminSocketName  = "admin.sock"
	auditDirName     = "audit"
	kekFileName      = "kek"
	serverDirName    = "server"
	identityFileName = "identity.json"
	joinFileName     = "join.json"
	bundleFileName   = "bundle.pem"
	lockFileName     = "server.lock"
)

// DefaultAdminSocket is the operator socket of a server whose Config gives
// none: <dataDir>/admin.sock.
func DefaultAdminSocket(dataDir string) string { return filepath.Join(dataDir, AdminSocketName) }

// KEKPath is where a key-encryption key kept in the data directory lives:
// <dataDir>/kek. Keeping it beside the keys it protects is for development
// only; production servers are given a KEK file kept elsewhere.
func KEKPath(dataDir string) string { return filepath.Join(dataDir, kekFileName) }

// TrustBundlePath is the trust bundle New writes: <dataDir>/server/bundle.pem.
func TrustBundlePath(dataDir string) string {
	return filepath.Join(dataDir, serverDirName, bundleFileName)
}

func identityPath(dataDir string) string {
	return filepath.Join(dataDir, serverDirName, identityFileName)
}

func joinAttemptPath(dataDir string) string {
	return filepath.Join(dataDir, serverDirName, joinFileName)
}

func auditDir(dataDir string) string { return filepath.Join(dataDir, auditDirName) }

// LockDataDir locks dataDir for the calling process, which is to run a
// server in it: a second process gets a *dirlock.HeldError that names the
// PID of the first. The kernel releases the lock when the process exits.
func LockDataDir(dataDir string) (*dirlock.Lock, error) {
	return dirlock.Acquire(dataDir, lockFileName)
}

// IsDataDir reports whether dir is, or was, the data directory of a
// server: it holds a server identity, Raft state, or a server's lock.
func IsDataDir(dir string) (bool, error) {
	if has, err := HasIdentity(dir); has || err != nil {
		return has, err
	}
	for _, p := range []string{store.RaftDir(dir), filepath.Join(dir, lockFileName)} {
		_, err := os.Stat(p)
		switch {
		case err == nil:
			return true, nil
		case !errors.Is(err, fs.ErrNotExist):
			return false, fmt.Errorf("server data directory: %w", err)
		}
	}
	return false, nil
}

// writeTrustBundle writes the trust bundle, pem, to TrustBundlePath.
func writeTrustBundle(dataDir string, pem []byte) error {
	path := TrustBundlePath(dataDir)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("write the trust bundle: %w", err)
	}
	if err := atomicfile.Write(path, pem, 0o644); err != nil {
		return fmt.Errorf("write the trust bundle: %w", err)
	}
	return nil
}

// LoadTrustBundle reads a PEM trust bundle file, as New writes it (see
// TrustBundlePath) and agents and joining servers are given: CERTIFICATE
// blocks only, at least one, the roots of a single trust domain.
func LoadTrustBundle(path string) ([]*x509.Certificate, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("trust bundle: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, ca.MaxPEMBundleSize+1))
	if err != nil {
		return nil, fmt.Errorf("trust bundle %s: %w", path, err)
	}
	return ParseTrustBundle(path, b)
}

// ParseTrustBundle parses the PEM trust bundle b, read from name (a path,
// or a description such as "of the server"), as LoadTrustBundle does.
func ParseTrustBundle(name string, b []byte) ([]*x509.Certificate, error) {
	roots, err := ca.ParseCertificatesPEM(b)
	if errors.Is(err, ca.ErrNoPEMCertificate) {
		return nil, fmt.Errorf("trust bundle %s holds no certificate: give the first server's <data-dir>/%s/%s", name, serverDirName, bundleFileName)
	}
	if err != nil {
		return nil, fmt.Errorf("trust bundle %s: %w", name, err)
	}
	if _, err := ca.TrustDomainOfRoots(roots); err != nil {
		return nil, fmt.Errorf("trust bundle %s: %w", name, err)
	}
	return roots, nil
}
