package main

// The attestation settings of meshca server (node attestors) and meshca
// agent (node evidence, workload attestors), and the files they read.

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"strings"

	"github.com/go-jose/go-jose/v4"
	"github.com/meshca/meshca/attest"
	"github.com/meshca/meshca/attest/jointoken"
	"github.com/meshca/meshca/attest/k8s"
	"github.com/meshca/meshca/attest/k8spsat"
	"github.com/meshca/meshca/attest/unix"
	"github.com/meshca/meshca/attest/x509pop"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/server"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// maxAttestFile bounds the certificate, key, JWKS and token files the
// attestation settings name.
const maxAttestFile = 1 << 20

// readAttestFile reads a file named by an attestation setting; what names
// the setting in errors, e.g. "--x509pop-ca".
func readAttestFile(what, path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxAttestFile+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, path, err)
	}
	if len(b) > maxAttestFile {
		return nil, fmt.Errorf("%s %s is larger than %d bytes", what, path, maxAttestFile)
	}
	return b, nil
}

// checkReadable opens path and closes it, so that a missing or unreadable
// file named by a setting is reported when the command starts rather than
// at its first use.
func checkReadable(what, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return f.Close()
}

// loadPEMCertificates reads a PEM file of certificates: every block must be
// a CERTIFICATE, and there must be at least one. what names the setting
// in errors.
func loadPEMCertificates(what, path string) ([]*x509.Certificate, error) {
	b, err := readAttestFile(what, path)
	if err != nil {
		return nil, err
	}
	certs, err := ca.ParseCertificatesPEM(b)
	if errors.Is(err, ca.ErrNoPEMCertificate) {
		return nil, fmt.Errorf("%s %s holds no PEM certificate", what, path)
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, path, err)
	}
	return certs, nil
}

// loadPrivateKey reads the one private key of a PEM file: PKCS#8 ("PRIVATE
// KEY"), SEC1 ("EC PRIVATE KEY") or PKCS#1 ("RSA PRIVATE KEY"). EC
// PARAMETERS blocks, as `openssl ecparam -genkey` writes, and certificates
// are skipped, so a file holding a certificate and its key will do.
func loadPrivateKey(what, path string) (crypto.Signer, error) {
	b, err := readAttestFile(what, path)
	if err != nil {
		return nil, err
	}
	defer clear(b)
	var key crypto.Signer
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		var k any
		switch blk.Type {
		case "EC PARAMETERS", "CERTIFICATE":
			continue
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, fmt.Errorf("%s %s: the private key is encrypted; give it unencrypted, in a file only the agent's user can read", what, path)
		default:
			return nil, fmt.Errorf("%s %s: a %q PEM block; want a PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY", what, path, blk.Type)
		}
		clear(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %s block: %w", what, path, blk.Type, err)
		}
		if key != nil {
			return nil, fmt.Errorf("%s %s holds more than one private key", what, path)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%s %s: a %T key cannot sign", what, path, k)
		}
		key = s
	}
	if key == nil {
		return nil, fmt.Errorf("%s %s holds no PEM private key", what, path)
	}
	return key, nil
}

// loadJWKS reads a JSON Web Key Set, as a Kubernetes API server serves it
// at /openid/v1/jwks; what names the setting in errors.
func loadJWKS(what, path string) (jose.JSONWebKeySet, error) {
	var set jose.JSONWebKeySet
	b, err := readAttestFile(what, path)
	if err != nil {
		return set, err
	}
	if err := json.Unmarshal(b, &set); err != nil {
		return set, fmt.Errorf("%s %s is not a JSON Web Key Set: %w", what, path, err)
	}
	if len(set.Keys) == 0 {
		return set, fmt.Errorf(`%s %s holds no keys: want {"keys": [...]}, as the cluster serves at /openid/v1/jwks`, what, path)
	}
	return set, nil
}

// validPathSegment reports whether s is usable as a k8s_psat cluster name:
// letters, digits, '.', '-' and '_', as a segment of agents' SPIFFE IDs.
func validPathSegment(s string) bool {
	if s == "" || s == "." || s == ".." {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// k8sPSATClusterConfig is one object of k8s_psat_clusters in a server's
// configuration file: a Kubernetes cluster whose agents may attest.
type k8sPSATClusterConfig struct {
	Name                   string   `json:"name"`
	Issuer                 string   `json:"issuer"`
	Audience               string   `json:"audience"`
	JWKSFile               string   `json:"jwks_file"`
	AllowedServiceAccounts []string `json:"allowed_service_accounts"`
}

// psatCluster is a k8s_psat cluster of a server's settings, and where it
// was given, for errors.
type psatCluster struct {
	k8sPSATClusterConfig
	where string
	flags bool // given by the --k8s-psat-* flags or k8s_psat_* keys
}

// psatClusters returns the k8s_psat clusters of c: those of
// k8s_psat_clusters, then the one of the --k8s-psat-* flags (or the
// k8s_psat_* keys), if any.
func (c *serverConfig) psatClusters() []psatCluster {
	var cl []psatCluster
	for i, k := range c.K8sPSATClusters {
		where := fmt.Sprintf("k8s_psat_clusters[%d]", i)
		if k.Name != "" {
			where += fmt.Sprintf(" (%q)", k.Name)
		}
		cl = append(cl, psatCluster{k8sPSATClusterConfig: k, where: where})
	}
	if c.K8sPSATCluster != "" {
		cl = append(cl, psatCluster{
			k8sPSATClusterConfig: k8sPSATClusterConfig{
				Name: c.K8sPSATCluster, Issuer: c.K8sPSATIssuer, Audience: c.K8sPSATAudience,
				JWKSFile: c.K8sPSATJWKS, AllowedServiceAccounts: c.K8sPSATAllowedSA,
			},
			where: fmt.Sprintf("--k8s-psat-cluster %q", c.K8sPSATCluster),
			flags: true,
		})
	}
	return cl
}

// checkNodeAttestorConfig refuses node attestor settings that cannot work,
// before any file is read: these are usage errors.
func checkNodeAttestorConfig(c *serverConfig) error {
	for _, f := range c.X509PopCA {
		if f == "" {
			return usageErrorf("--x509pop-ca: an empty file name")
		}
	}
	if c.K8sPSATCluster == "" {
		for _, f := range []struct {
			flag string
			set  bool
		}{
			{"--k8s-psat-issuer", c.K8sPSATIssuer != ""},
			{"--k8s-psat-jwks", c.K8sPSATJWKS != ""},
			{"--k8s-psat-audience", c.K8sPSATAudience != ""},
			{"--k8s-psat-allowed-sa", len(c.K8sPSATAllowedSA) > 0},
		} {
			if f.set {
				return usageErrorf("%s needs --k8s-psat-cluster, the name of the Kubernetes cluster it describes (k8s_psat_cluster in a config file)", f.flag)
			}
		}
	}
	names := map[string]bool{}
	for _, k := range c.psatClusters() {
		setting := func(flag, key string) string {
			if k.flags {
				return flag
			}
			return key
		}
		switch {
		case k.Name == "":
			return usageErrorf("%s: name is required", k.where)
		case !validPathSegment(k.Name):
			return usageErrorf("%s: the cluster name must be letters, digits, '.', '-' or '_'", k.where)
		case names[k.Name]:
			return usageErrorf("%s: the k8s_psat cluster %q is configured twice", k.where, k.Name)
		case k.Issuer == "":
			return usageErrorf("%s needs %s, the cluster's service account issuer (its --service-account-issuer, e.g. https://kubernetes.default.svc.cluster.local)",
				k.where, setting("--k8s-psat-issuer", "issuer"))
		case k.JWKSFile == "":
			return usageErrorf("%s needs %s, a file of the issuer's public keys (kubectl get --raw /openid/v1/jwks > jwks.json)",
				k.where, setting("--k8s-psat-jwks", "jwks_file"))
		}
		names[k.Name] = true
		for _, sa := range k.AllowedServiceAccounts {
			ns, name, ok := strings.Cut(sa, ":")
			if !ok || ns == "" || name == "" || strings.Contains(name, ":") {
				return usageErrorf("%s: allowed service account %q: want namespace:name", k.where, sa)
			}
		}
	}
	return nil
}

// nodeAttestorFiles holds what the node attestors of a server read from
// files, loaded before the server creates anything.
type nodeAttestorFiles struct {
	x509popRoots []*x509.Certificate
	clusters     []k8spsat.ClusterConfig
}

// loadNodeAttestorFiles reads the provisioning CAs and JWKS files of c
// (checked by checkNodeAttestorConfig).
func loadNodeAttestorFiles(c *serverConfig) (*nodeAttestorFiles, error) {
	nf := &nodeAttestorFiles{}
	for _, f := range c.X509PopCA {
		certs, err := loadPEMCertificates("x509pop provisioning CA file (--x509pop-ca)", f)
		if err != nil {
			return nil, err
		}
		nf.x509popRoots = append(nf.x509popRoots, certs...)
	}
	for _, k := range c.psatClusters() {
		what := k.where + ": JWKS file (jwks_file)"
		if k.flags {
			what = k.where + ": JWKS file (--k8s-psat-jwks)"
		}
		jwks, err := loadJWKS(what, k.JWKSFile)
		if err != nil {
			return nil, err
		}
		nf.clusters = append(nf.clusters, k8spsat.ClusterConfig{
			Name: k.Name, Issuer: k.Issuer, Audience: k.Audience, JWKS: jwks,
			AllowedServiceAccounts: k.AllowedServiceAccounts,
		})
	}
	return nf, nil
}

// empty reports whether no node attestor besides join_token is configured.
func (nf *nodeAttestorFiles) empty() bool {
	return len(nf.x509popRoots) == 0 && len(nf.clusters) == 0
}

// attestors returns the configured node attestors for agents of trust
// domain td. join_token is not among them: the server always enables it.
func (nf *nodeAttestorFiles) attestors(td spiffeid.TrustDomain) ([]attest.NodeAttestor, error) {
	var as []attest.NodeAttestor
	if len(nf.x509popRoots) > 0 {
		a, err := x509pop.New(x509pop.Config{TrustDomain: td, Roots: nf.x509popRoots})
		if err != nil {
			return nil, fmt.Errorf("configure the node attestor: %w", err)
		}
		as = append(as, a)
	}
	if len(nf.clusters) > 0 {
		a, err := k8spsat.New(k8spsat.Config{TrustDomain: td, Clusters: nf.clusters})
		if err != nil {
			return nil, fmt.Errorf("configure the node attestor: %w", err)
		}
		as = append(as, a)
	}
	return as, nil
}

// attestorTrustDomain returns the trust domain in which the node attestors
// name agents, known before the server starts:
//   - a server that already has its identity belongs to the trust domain of
//     the trust bundle it wrote at its last start, <dataDir>/server/bundle.pem
//     (--bootstrap and --trust-domain are ignored then, as server.New
//     ignores them);
//   - a bootstrapping server, to --trust-domain;
//   - a joining server, to that of --trust-bundle (roots, already read).
//
// The server checks, once started, that its trust bundle names the same
// trust domain.
func attestorTrustDomain(c *serverConfig, dataDir string, hasIdentity bool, roots []*x509.Certificate) (spiffeid.TrustDomain, error) {
	switch {
	case hasIdentity:
		path := server.TrustBundlePath(dataDir)
		roots, err := server.LoadTrustBundle(path)
		if errors.Is(err, fs.ErrNotExist) {
			return spiffeid.TrustDomain{}, fmt.Errorf("the node attestors need the server's trust domain, read from %s, which is missing; start the server once without the node attestor settings to write it again", path)
		}
		if err != nil {
			return spiffeid.TrustDomain{}, fmt.Errorf("the server's trust bundle: %w", err)
		}
		return ca.TrustDomainOfRoots(roots)
	case c.Bootstrap:
		return spiffeid.TrustDomainFromString(c.TrustDomain)
	case c.Join != "" && len(roots) == 0: // joining with a server-join secret
		return spiffeid.TrustDomainFromString(c.TrustDomain)
	case c.Join != "":
		return ca.TrustDomainOfRoots(roots)
	}
	// serverKEK refuses a server with no identity and neither mode first.
	return spiffeid.TrustDomain{}, errors.New("this server has no identity yet: give --bootstrap or --join")
}

// checkBundleTrustDomain checks that the PEM trust bundle of a started
// server names trust domain td, the node attestors'.
func checkBundleTrustDomain(bundlePEM []byte, td spiffeid.TrustDomain) error {
	roots, err := server.ParseTrustBundle("the server's trust bundle", bundlePEM)
	if err != nil {
		return err
	}
	got, err := ca.TrustDomainOfRoots(roots)
	if err != nil {
		return fmt.Errorf("the server's trust bundle: %w", err)
	}
	if got != td {
		return fmt.Errorf("the server belongs to trust domain %q, but its node attestors were configured for %q", got.Name(), td.Name())
	}
	return nil
}

// evidenceKinds lists the kinds of node evidence c gives, by flag.
func (c *agentConfig) evidenceKinds() []string {
	var kinds []string
	if c.JoinToken != "" {
		kinds = append(kinds, "--join-token")
	}
	if c.X509PopCert != "" || c.X509PopKey != "" {
		kinds = append(kinds, "--x509pop-cert/--x509pop-key")
	}
	if c.K8sPSATCluster != "" {
		kinds = append(kinds, "--k8s-psat-cluster")
	}
	return kinds
}

// checkAttestationConfig refuses agent attestation settings that cannot
// work, before any file is read: these are usage errors.
func checkAttestationConfig(c *agentConfig) error {
	if kinds := c.evidenceKinds(); len(kinds) > 1 {
		return usageErrorf("give one kind of node evidence, not %s: a join token (--join-token), an x509pop certificate and key (--x509pop-cert, --x509pop-key) or a Kubernetes cluster (--k8s-psat-cluster)",
			strings.Join(kinds, " and "))
	}
	switch {
	case c.X509PopCert != "" && c.X509PopKey == "":
		return usageErrorf("--x509pop-cert needs --x509pop-key, the PEM private key of the certificate (x509pop_key in a config file)")
	case c.X509PopKey != "" && c.X509PopCert == "":
		return usageErrorf("--x509pop-key needs --x509pop-cert, the PEM certificate chain, leaf first (x509pop_cert in a config file)")
	case c.K8sPSATTokenPath != "" && c.K8sPSATCluster == "":
		return usageErrorf("--k8s-psat-token-path needs --k8s-psat-cluster, the cluster's name as the servers know it (k8s_psat_cluster in a config file)")
	case c.K8sPSATCluster != "" && !validPathSegment(c.K8sPSATCluster):
		return usageErrorf("--k8s-psat-cluster %q: the cluster name must be letters, digits, '.', '-' or '_'", c.K8sPSATCluster)
	}
	if c.K8sKubeletURL == "" {
		for _, f := range []struct {
			flag string
			set  bool
		}{
			{"--k8s-kubelet-token", c.K8sKubeletToken != ""},
			{"--k8s-kubelet-ca", c.K8sKubeletCA != ""},
			{"--k8s-kubelet-insecure", c.K8sKubeletInsecure},
		} {
			if f.set {
				return usageErrorf("%s needs --k8s-kubelet-url, which enables the k8s workload attestor (k8s_kubelet_url in a config file), e.g. %s", f.flag, k8s.DefaultKubeletURL)
			}
		}
		return nil
	}
	if u, err := url.Parse(c.K8sKubeletURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return usageErrorf("--k8s-kubelet-url %q: want the kubelet's URL, e.g. %s", c.K8sKubeletURL, k8s.DefaultKubeletURL)
	}
	if c.K8sKubeletCA != "" && c.K8sKubeletInsecure {
		return usageErrorf("--k8s-kubelet-ca and --k8s-kubelet-insecure exclude each other: verify the kubelet with its CA, or not at all")
	}
	return nil
}

// nodeEvidence returns the node evidence that c gives, reading its files,
// or nil if it gives none. c is checked by checkAttestationConfig.
func nodeEvidence(c *agentConfig) (attest.NodeEvidence, error) {
	switch {
	case c.JoinToken != "":
		if err := server.CheckJoinToken(c.JoinToken); err != nil {
			return nil, usageErrorf("the agent join token (--join-token or $%s): %v; make one with `meshca token create --kind agent`", envJoinToken, err)
		}
		return jointoken.NewEvidence(c.JoinToken), nil
	case c.X509PopCert != "":
		certs, err := loadPEMCertificates("x509pop certificate (--x509pop-cert)", c.X509PopCert)
		if err != nil {
			return nil, err
		}
		key, err := loadPrivateKey("x509pop private key (--x509pop-key)", c.X509PopKey)
		if err != nil {
			return nil, err
		}
		chain := make([][]byte, len(certs))
		for i, cert := range certs {
			chain[i] = cert.Raw
		}
		ev, err := x509pop.NewEvidence(chain, key)
		if err != nil {
			return nil, fmt.Errorf("--x509pop-cert %s and --x509pop-key %s: %w", c.X509PopCert, c.X509PopKey, err)
		}
		return ev, nil
	case c.K8sPSATCluster != "":
		path := c.K8sPSATTokenPath
		if path == "" {
			path = k8spsat.DefaultTokenPath
		}
		if err := checkReadable("k8s_psat token (--k8s-psat-token-path)", path); err != nil {
			return nil, fmt.Errorf("%w; the agent's pod must mount a projected service account token for the servers' audience there", err)
		}
		return k8spsat.NewEvidence(c.K8sPSATCluster, path), nil
	}
	return nil, nil
}

// workloadAttestors are the workload attestors of an agent with settings
// c: unix always, and k8s when c gives a kubelet URL. log receives their
// debug messages.
func workloadAttestors(log *slog.Logger, c *agentConfig) ([]attest.WorkloadAttestor, error) {
	as := []attest.WorkloadAttestor{unix.New(unix.Config{Log: log})}
	if c.K8sKubeletURL == "" {
		return as, nil
	}
	if c.K8sKubeletToken != "" {
		if err := checkReadable("kubelet token (--k8s-kubelet-token)", c.K8sKubeletToken); err != nil {
			return nil, err
		}
	}
	a, err := k8s.New(k8s.Config{
		KubeletURL: c.K8sKubeletURL, TokenFile: c.K8sKubeletToken,
		CAFile: c.K8sKubeletCA, InsecureSkipVerify: c.K8sKubeletInsecure, Log: log,
	})
	if err != nil {
		return nil, fmt.Errorf("configure the workload attestor: %w", err)
	}
	return append(as, a), nil
}
