package policy

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/keys"
)

// SigningAlg is the algorithm OPA bundles are signed with.
const SigningAlg = "ES256"

// validName is a bundle name: it is a path segment of the bundle service
// and part of an SDS resource name.
var validName = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// CheckName refuses a name that is not a valid bundle name.
func CheckName(name string) error {
	if !validName.MatchString(name) {
		return invalid("bundle name %q: use 1-63 lower-case letters, digits, '.', '_' and '-', starting with a letter or digit", name)
	}
	return nil
}

// BuildOptions says how to build and sign a bundle.
type BuildOptions struct {
	// Revision is the bundle's revision, written to its manifest.
	Revision uint64
	// Key signs the bundle; KeyID names it in the signature (kid).
	Key   *ecdsa.PrivateKey
	KeyID string
	// MaxSize bounds the sources and the built bundle (0: DefaultMaxSize).
	MaxSize int64
}

// Built is a signed bundle.
type Built struct {
	// Bytes is the bundle, a gzipped tar as OPA reads it.
	Bytes []byte
	// Roots are the manifest's roots: the first segments of its packages
	// and data paths.
	Roots []string
	// SHA256 of Bytes.
	SHA256 [32]byte
}

// Build compiles a policy's files into an OPA bundle (.manifest with the
// revision, roots and rego_version 1; data.json; the modules) signed with
// opts.Key in OPA's bundle signature format (.signatures.json).
func Build(files []File, opts BuildOptions) (*Built, error) {
	if opts.Key == nil || opts.KeyID == "" {
		return nil, errors.New("policy: a bundle needs a signing key and its kid")
	}
	maxSize := opts.MaxSize
	if maxSize <= 0 {
		maxSize = DefaultMaxSize
	}
	p, err := parse(files, maxSize, nil)
	if err != nil {
		return nil, err
	}
	roots := append([]string(nil), p.roots...)
	b := bundle.Bundle{
		Manifest: bundle.Manifest{Revision: strconv.FormatUint(opts.Revision, 10), Roots: &roots},
		Data:     p.data,
	}
	b.Manifest.SetRegoVersion(ast.RegoV1)
	for _, f := range files {
		if m, ok := p.modules[f.Path]; ok {
			b.Modules = append(b.Modules, bundle.ModuleFile{URL: "/" + f.Path, Path: "/" + f.Path, Raw: f.Content, Parsed: m})
		}
	}
	der, err := x509.MarshalPKCS8PrivateKey(opts.Key)
	if err != nil {
		return nil, fmt.Errorf("policy: signing key: %w", err)
	}
	privPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	if err := b.GenerateSignature(bundle.NewSigningConfig(privPEM, SigningAlg, ""), opts.KeyID, false); err != nil {
		return nil, fmt.Errorf("policy: sign the bundle: %w", err)
	}
	var buf bytes.Buffer
	if err := bundle.NewWriter(&buf).Write(b); err != nil {
		return nil, fmt.Errorf("policy: write the bundle: %w", err)
	}
	if int64(buf.Len()) > maxSize {
		return nil, invalid("the bundle is %d bytes, over the bound of %d", buf.Len(), maxSize)
	}
	return &Built{Bytes: buf.Bytes(), Roots: roots, SHA256: sha256.Sum256(buf.Bytes())}, nil
}

// PublicKeyPEM encodes an OPA signing key's public key as OPA's keys
// configuration takes it.
func PublicKeyPEM(pubDER []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
}

// Verify reads a signed bundle as OPA does, verifying its signature with
// the public key (PEM) named keyID, its file list and every file's hash.
func Verify(r io.Reader, pubPEM []byte, keyID string) (*bundle.Bundle, error) {
	kc, err := keys.NewKeyConfig(string(pubPEM), SigningAlg, "")
	if err != nil {
		return nil, fmt.Errorf("policy: verification key: %w", err)
	}
	vc := bundle.NewVerificationConfig(map[string]*bundle.KeyConfig{keyID: kc}, keyID, "", nil)
	b, err := bundle.NewReader(r).WithBundleVerificationConfig(vc).WithRegoVersion(ast.RegoV1).Read()
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	return &b, nil
}
