package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/meshca/meshca/ca"
	_ "github.com/meshca/meshca/ca/stepcas" // the offline CA's ECDSA hierarchy (x509 mint)
	"github.com/meshca/meshca/internal/atomicfile"
	"github.com/meshca/meshca/internal/dirlock"
	"github.com/meshca/meshca/server"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// File modes of what meshca writes.
const (
	modeDir     fs.FileMode = 0o700
	modePrivate fs.FileMode = 0o600 // private keys
	modePublic  fs.FileMode = 0o644 // certificates and bundles
)

// lockDataDir locks dataDir for this server (or dev) process, saying which
// process holds it if another does.
func lockDataDir(dataDir string) (*dirlock.Lock, error) {
	l, err := server.LockDataDir(dataDir)
	var held *dirlock.HeldError
	if errors.As(err, &held) {
		return nil, fmt.Errorf("%v: a data directory serves one server at a time; stop that one first (meshca dev and meshca server run until Ctrl-C or SIGTERM), or give this one another --data-dir", held)
	}
	return l, err
}

// defaultDataDir is the data directory used without --data-dir:
// $MESHCA_DATA_DIR, else $XDG_DATA_HOME/meshca (XDG_DATA_HOME must be
// absolute, as the XDG spec requires), else ~/.local/share/meshca.
func defaultDataDir(getenv func(string) string) (string, error) {
	if d := getenv(envDataDir); d != "" {
		return d, nil
	}
	if x := getenv("XDG_DATA_HOME"); x != "" && filepath.IsAbs(x) {
		return filepath.Join(x, "meshca"), nil
	}
	if h := getenv("HOME"); h != "" {
		return filepath.Join(h, ".local", "share", "meshca"), nil
	}
	return "", errors.New("no default data directory: $HOME is not set; use --data-dir or " + envDataDir)
}

// kekInfo says which key-encryption key opened the CA. It holds no key
// material: ID is the KEK's public fingerprint.
type kekInfo struct {
	File string `json:"file"`
	// Source is "--kek-file", "MESHCA_KEK_FILE" or "data-dir".
	Source  string `json:"source"`
	ID      string `json:"id"`
	Created bool   `json:"created"`
}

// dataDirOr returns dir made absolute, or the default data directory when
// dir is empty.
func (a *app) dataDirOr(dir string) (string, error) {
	if dir == "" {
		d, err := defaultDataDir(a.getenv)
		if err != nil {
			return "", err
		}
		dir = d
	}
	return absDir("--data-dir", dir)
}

// explicitKEK loads the key-encryption key given by flagFile, else by
// $MESHCA_KEK_FILE; ok is false when neither names one.
func (a *app) explicitKEK(flagFile string) (kek *ca.KEK, info kekInfo, ok bool, err error) {
	file, source := flagFile, "--kek-file"
	if file == "" {
		file, source = a.getenv(envKEKFile), envKEKFile
	}
	if file == "" {
		return nil, kekInfo{}, false, nil
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		return nil, kekInfo{}, true, fmt.Errorf("key-encryption key from %s: %w", source, err)
	}
	if kek, err = ca.LoadKEKFile(abs); err != nil {
		return nil, kekInfo{}, true, fmt.Errorf("key-encryption key from %s: %w", source, err)
	}
	return kek, kekInfo{File: abs, Source: source, ID: kek.ID()}, true, nil
}

// loadKEK finds the key-encryption key: flagFile, else $MESHCA_KEK_FILE,
// both of which must exist; else dataDir/kek, created when the data directory
// holds no CA yet, with a warning on stderr that this is for development only.
func (a *app) loadKEK(flagFile, dataDir string) (*ca.KEK, kekInfo, error) {
	if kek, info, ok, err := a.explicitKEK(flagFile); ok || err != nil {
		return kek, info, err
	}

	// An offline CA keeps its KEK where a server keeps one.
	file, source := server.KEKPath(dataDir), "data-dir"
	exists, err := ca.LocalExists(dataDir)
	if err != nil {
		return nil, kekInfo{}, err
	}
	var kek *ca.KEK
	var created bool
	if exists {
		// Never create a KEK for an existing CA: it could not open it, and
		// the new file would be left behind.
		kek, err = ca.LoadKEKFile(file)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, kekInfo{}, fmt.Errorf("the CA in %s was created with a key-encryption key kept elsewhere: give it with --kek-file or %s", dataDir, envKEKFile)
		}
	} else {
		kek, created, err = ca.LoadOrCreateKEKFile(file)
	}
	if err != nil {
		return nil, kekInfo{}, fmt.Errorf("key-encryption key in the data directory: %w", err)
	}
	verb := "using"
	if created {
		verb = "created"
	}
	fmt.Fprintf(a.stderr, "meshca: warning: %s the key-encryption key %s, stored beside the keys it protects; this is for development only (use --kek-file or %s to keep it elsewhere)\n", verb, file, envKEKFile)
	return kek, kekInfo{File: file, Source: source, ID: kek.ID(), Created: created}, nil
}

// openCA opens or creates the local CA in dataDir. td may be zero to reopen
// whatever trust domain the directory holds; a non-zero td must match it.
func (a *app) openCA(dataDir, kekFile string, td spiffeid.TrustDomain) (*ca.LocalCA, kekInfo, error) {
	if err := os.MkdirAll(dataDir, modeDir); err != nil {
		return nil, kekInfo{}, fmt.Errorf("create data directory: %w", err)
	}
	kek, info, err := a.loadKEK(kekFile, dataDir)
	if err != nil {
		return nil, kekInfo{}, err
	}
	l, err := ca.OpenLocal(ca.LocalConfig{Dir: dataDir, KEK: kek, TrustDomain: td})
	if errors.Is(err, ca.ErrWrongKEK) {
		return nil, kekInfo{}, fmt.Errorf("the key-encryption key %s (from %s) does not open the CA in %s; use the one it was created with: %w", info.File, info.Source, dataDir, err)
	}
	if err != nil {
		return nil, kekInfo{}, fmt.Errorf("open the CA in %s: %w", dataDir, err)
	}
	return l, info, nil
}

// absDir returns dir made absolute, so printed paths work from anywhere.
func absDir(flag, dir string) (string, error) {
	if dir == "" {
		return "", usageErrorf("%s must not be empty", flag)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", flag, dir, err)
	}
	return abs, nil
}

// writeFiles creates dir (mode 0700) if needed and writes each file in it
// atomically, in order.
func writeFiles(dir string, files ...outFile) error {
	if err := os.MkdirAll(dir, modeDir); err != nil {
		return fmt.Errorf("create directory: %w", err)
	}
	for _, f := range files {
		if err := atomicfile.Write(f.path, f.data, f.mode); err != nil {
			return err
		}
	}
	return nil
}

// outFile is one file to write.
type outFile struct {
	path string
	data []byte
	mode fs.FileMode
}
