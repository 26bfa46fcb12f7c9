package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/meshca/meshca/attest/k8spsat"
	"github.com/meshca/meshca/attest/x509pop"
	"github.com/meshca/meshca/server"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// provisioning is a test provisioning CA and a node certificate it issued,
// written as PEM files.
type provisioning struct {
	caFile   string // the CA certificate
	certFile string // the node's chain: its leaf only
	keyFile  string // the leaf's key, SEC1
	otherKey string // a key of another certificate, PKCS#8
	leaf     *x509.Certificate
}

// newProvisioning makes a provisioning CA and a node certificate with the
// clientAuth extended key usage and common name cn, in dir.
func newProvisioning(t *testing.T, dir, cn string) provisioning {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test provisioning CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	nodeKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(0x1234abcd), Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, nodeKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(leafDER)
	sec1, err := x509.MarshalECPrivateKey(nodeKey)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return provisioning{
		caFile:   writeTestFile(t, dir, "provisioning-ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})),
		certFile: writeTestFile(t, dir, "node.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER})),
		keyFile:  writeTestFile(t, dir, "node-key.pem", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})),
		otherKey: writeTestFile(t, dir, "other-key.pem", pkcs8PEM(t, other)),
		leaf:     leaf,
	}
}

func pkcs8PEM(t *testing.T, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// testIssuer is a Kubernetes service account issuer for k8s_psat tests.
type testIssuer struct {
	url      string
	key      *ecdsa.PrivateKey
	jwksFile string
}

func newTestIssuer(t *testing.T, dir string) testIssuer {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "k1", Algorithm: string(jose.ES256), Use: "sig"}}}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return testIssuer{url: "https://kubernetes.default.svc.cluster.local", key: key, jwksFile: writeTestFile(t, dir, "jwks.json", b)}
}

// token signs a pod-bound projected service account token for audience
// meshca, of the pod meshca/agent-1 of service account meshca:meshca-agent
// on the node of UID nodeUID.
func (is testIssuer) token(t *testing.T, nodeUID string) string {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: is.key, KeyID: "k1"}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	type ref struct {
		Name string `json:"name"`
		UID  string `json:"uid"`
	}
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{
		Issuer: is.url, Subject: "system:serviceaccount:meshca:meshca-agent", Audience: jwt.Audience{k8spsat.DefaultAudience},
		IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(10 * time.Minute)),
	}).Claims(map[string]any{"kubernetes.io": map[string]any{
		"namespace":      "meshca",
		"serviceaccount": ref{"meshca-agent", "sa-uid"},
		"pod":            ref{"agent-1", "pod-uid"},
		"node":           ref{"worker-1", nodeUID},
	}}).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestAgentsAttestWithX509PopAndK8sPSAT runs `meshca server` with the x509pop
// and k8s_psat node attestors, and two `meshca agent`s that attest with
// them; `meshca node list` shows both nodes with their attestors.
func TestAgentsAttestWithX509PopAndK8sPSAT(t *testing.T) {
	t.Parallel()
	env := testEnv(t)
	tmp := t.TempDir()
	prov := newProvisioning(t, tmp, "node-1")
	issuer := newTestIssuer(t, tmp)
	tokenFile := writeTestFile(t, tmp, "token", []byte(issuer.token(t, "node-uid-1")))

	dataDir := shortTempDir(t)
	sock := filepath.Join(dataDir, server.AdminSocketName)
	addr := "unix://" + sock
	ports := freePorts(t, 2)
	srv := startServer(t, env, sock, "--data-dir", dataDir, "--node-id", "s1", "--raft-addr", ports[0], "--api-addr", ports[1],
		"--bootstrap", "--trust-domain", "example.org", "--x509pop-ca", prov.caFile,
		"--k8s-psat-cluster", "c1", "--k8s-psat-issuer", issuer.url, "--k8s-psat-jwks", issuer.jwksFile,
		"--k8s-psat-allowed-sa", "meshca:meshca-agent")
	waitLeader(t, env, sock, "s1")
	waitFor(t, 10*time.Second, "bootstrap state written", func() (bool, string) {
		return strings.Contains(srv.stderr.String(), bootstrappedLog), "no " + bootstrappedLog + " in the log"
	})
	if logs := srv.stderr.String(); !strings.Contains(logs, "node_attestors=\"[join_token x509pop k8s_psat]\"") {
		t.Errorf("the server does not log its node attestors:\n%s", logs)
	}

	bundle := filepath.Join(dataDir, "server", "bundle.pem")
	startAgent := func(evidence ...string) *background {
		dir := shortTempDir(t)
		args := append([]string{"agent", "--server", ports[1], "--trust-bundle", bundle, "--data-dir", dir, "--socket", filepath.Join(dir, "w.sock")}, evidence...)
		// A join token in the environment is ignored when other evidence is given.
		return startBackground(t, map[string]string{"HOME": env["HOME"], envJoinToken: "unused"}, args...)
	}
	popAgent := startAgent("--x509pop-cert", prov.certFile, "--x509pop-key", prov.keyFile)
	psatAgent := startAgent("--k8s-psat-cluster", "c1", "--k8s-psat-token-path", tokenFile)

	sum := sha1.Sum(prov.leaf.Raw)
	popID := "spiffe://example.org/meshca/agent/x509pop/" + hex.EncodeToString(sum[:])
	psatID := "spiffe://example.org/meshca/agent/k8s_psat/c1/node-uid-1"
	var nodes struct{ Nodes []nodeReport }
	waitFor(t, 20*time.Second, "both agents attest", func() (bool, string) {
		popAgent.running(t)
		psatAgent.running(t)
		r := meshca(t, env, "node", "list", "--addr", addr, "--output", "json")
		nodes.Nodes = nil
		if r.code == exitOK {
			decodeJSON(t, r, &nodes)
		}
		return len(nodes.Nodes) == 2, r.stdout + r.stderr
	})
	got := map[string]nodeReport{}
	for _, n := range nodes.Nodes {
		got[n.SPIFFEID] = n
	}
	pop, psat := got[popID], got[psatID]
	if pop.Attestor != x509pop.Name || !slices.Contains(pop.Selectors, selectorReport{"x509pop", "subject:cn:node-1"}) ||
		!slices.Contains(pop.Selectors, selectorReport{"x509pop", "serialnumber:" + x509pop.SerialHex(prov.leaf)}) {
		t.Errorf("x509pop node %s = %+v; nodes: %+v", popID, pop, nodes.Nodes)
	}
	if psat.Attestor != k8spsat.Name || !slices.Contains(psat.Selectors, selectorReport{"k8s_psat", "agent_sa:meshca-agent"}) {
		t.Errorf("k8s_psat node %s = %+v; nodes: %+v", psatID, psat, nodes.Nodes)
	}
	if !strings.Contains(popAgent.stderr.String(), "attestor=x509pop") {
		t.Errorf("the agent does not log its attestor:\n%s", popAgent.stderr)
	}
	if strings.Contains(psatAgent.stderr.String()+srv.stderr.String(), readFileString(t, tokenFile)) {
		t.Error("the service account token was logged")
	}
}

func readFileString(t *testing.T, path string) string { return string(readFile(t, path)) }

func TestServerAttestorBadInput(t *testing.T) {
	t.Parallel()
	tmp := t.TempDir()
	kek := filepath.Join(tmp, "kek")
	if err := os.WriteFile(kek, []byte("not a kek, nor a JWKS, nor PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	prov := newProvisioning(t, tmp, "n")
	issuer := newTestIssuer(t, tmp)
	missing := filepath.Join(tmp, "missing.json")
	noKeys := writeTestFile(t, tmp, "empty-jwks.json", []byte(`{"keys": []}`))
	nestedUnknown := writeTestFile(t, tmp, "nested.json", []byte(`{"k8s_psat_clusters": [{"name": "c1", "bogus": 1}]}`))
	twice := writeTestFile(t, tmp, "twice.json", []byte(`{"k8s_psat_clusters": [{"name": "c1", "issuer": "i", "jwks_file": "jwks.json"}]}`))
	noIssuer := writeTestFile(t, tmp, "no-issuer.json", []byte(`{"k8s_psat_clusters": [{"name": "c2", "jwks_file": "jwks.json"}]}`))
	missingInFile := writeTestFile(t, tmp, "missing-jwks.json", []byte(`{"k8s_psat_clusters": [{"name": "c3", "issuer": "i", "jwks_file": "nope.json"}]}`))
	base := []string{"--node-id", "s1", "--raft-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0", "--bootstrap", "--trust-domain", "example.org"}
	psat := func(extra ...string) []string {
		return append([]string{"--k8s-psat-cluster", "c1", "--k8s-psat-issuer", issuer.url}, extra...)
	}

	for _, tc := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"fail/issuer-without-cluster", []string{"--k8s-psat-issuer", issuer.url}, exitUsage,
			[]string{"--k8s-psat-issuer needs --k8s-psat-cluster"}},
		{"fail/allowed-sa-without-cluster", []string{"--k8s-psat-allowed-sa", "a:b"}, exitUsage,
			[]string{"--k8s-psat-allowed-sa needs --k8s-psat-cluster"}},
		{"fail/cluster-without-issuer", []string{"--k8s-psat-cluster", "c1", "--k8s-psat-jwks", issuer.jwksFile}, exitUsage,
			[]string{`--k8s-psat-cluster "c1" needs --k8s-psat-issuer`}},
		{"fail/cluster-without-jwks", psat(), exitUsage, []string{`--k8s-psat-cluster "c1" needs --k8s-psat-jwks`, "/openid/v1/jwks"}},
		{"fail/bad-cluster-name", []string{"--k8s-psat-cluster", "a/b", "--k8s-psat-issuer", "i", "--k8s-psat-jwks", issuer.jwksFile}, exitUsage,
			[]string{"cluster name must be letters"}},
		{"fail/bad-allowed-sa", psat("--k8s-psat-jwks", issuer.jwksFile, "--k8s-psat-allowed-sa", "meshca"), exitUsage,
			[]string{`allowed service account "meshca": want namespace:name`}},
		{"fail/unreadable-jwks", psat("--k8s-psat-jwks", missing), exitError,
			[]string{`--k8s-psat-cluster "c1": JWKS file (--k8s-psat-jwks): open ` + missing, "no such file"}},
		{"fail/jwks-not-json", psat("--k8s-psat-jwks", kek), exitError, []string{kek + " is not a JSON Web Key Set"}},
		{"fail/jwks-no-keys", psat("--k8s-psat-jwks", noKeys), exitError, []string{noKeys + " holds no keys"}},
		{"fail/x509pop-ca-missing", []string{"--x509pop-ca", missing}, exitError, []string{"--x509pop-ca", missing, "no such file"}},
		{"fail/x509pop-ca-not-pem", []string{"--x509pop-ca", prov.caFile, "--x509pop-ca", kek}, exitError, []string{kek + " holds no PEM certificate"}},
		{"fail/x509pop-ca-key", []string{"--x509pop-ca", prov.keyFile}, exitError, []string{`"EC PRIVATE KEY" PEM block`}},
		{"fail/config-nested-unknown-key", []string{"--config", nestedUnknown}, exitUsage,
			[]string{`unknown key "bogus"`, "k8s_psat_clusters (a list of objects with the keys name, issuer, audience, jwks_file, allowed_service_accounts)"}},
		{"fail/config-cluster-twice", append([]string{"--config", twice}, psat("--k8s-psat-jwks", issuer.jwksFile)...), exitUsage,
			[]string{`the k8s_psat cluster "c1" is configured twice`}},
		{"fail/config-cluster-without-issuer", []string{"--config", noIssuer}, exitUsage, []string{`k8s_psat_clusters[0] ("c2") needs issuer`}},
		{"fail/config-unreadable-jwks", []string{"--config", missingInFile}, exitError,
			[]string{`k8s_psat_clusters[0] ("c3"): JWKS file (jwks_file): open ` + filepath.Join(tmp, "nope.json")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dataDir := shortTempDir(t)
			before := treeSnapshot(t, dataDir)
			args := append([]string{"server", "--data-dir", dataDir}, tc.args...)
			r := meshca(t, testEnv(t), append(args, base...)...)
			if r.code != tc.code {
				t.Errorf("exit %d, want %d; stderr %q", r.code, tc.code, r.stderr)
			}
			if !strings.HasPrefix(r.stderr, "meshca: ") {
				t.Errorf("stderr = %q, want it to start with \"meshca: \"", r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr = %q, want it to contain %q", r.stderr, w)
				}
			}
			if d := diffSnapshots(before, treeSnapshot(t, dataDir)); len(d) != 0 {
				t.Errorf("a refused start changed the data directory: %v", d)
			}
		})
	}
}

// The node attestor settings of a server's configuration file: paths are
// relative to the file, flags replace the file's values, and the clusters
// of k8s_psat_clusters and of the k8s_psat_* keys add up.
func TestServerAttestorConfigFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	issuer := newTestIssuer(t, dir)
	prov := newProvisioning(t, dir, "n")
	p := writeTestFile(t, dir, "c.json", []byte(`{"x509pop_ca": ["provisioning-ca.pem", "/etc/ca2.pem"],
		"k8s_psat_cluster": "one", "k8s_psat_issuer": "https://one", "k8s_psat_jwks": "jwks.json",
		"k8s_psat_clusters": [{"name": "two", "issuer": "https://two", "audience": "aud", "jwks_file": "jwks.json",
			"allowed_service_accounts": ["ns:sa"]}]}`))
	c, err := loadServerConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	want := serverConfig{
		X509PopCA:      []string{prov.caFile, "/etc/ca2.pem"},
		K8sPSATCluster: "one", K8sPSATIssuer: "https://one", K8sPSATJWKS: issuer.jwksFile,
		K8sPSATClusters: []k8sPSATClusterConfig{{Name: "two", Issuer: "https://two", Audience: "aud", JWKSFile: issuer.jwksFile,
			AllowedServiceAccounts: []string{"ns:sa"}}},
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("loadServerConfig = %+v, want %+v", c, want)
	}
	cmd := (&app{}).newServerCommand()
	if err := cmd.Flags().Parse([]string{"--x509pop-ca", prov.caFile, "--k8s-psat-allowed-sa", "a:b"}); err != nil {
		t.Fatal(err)
	}
	c.override(cmd.Flags(), &serverConfig{X509PopCA: []string{prov.caFile}, K8sPSATAllowedSA: []string{"a:b"}})
	want.X509PopCA, want.K8sPSATAllowedSA = []string{prov.caFile}, []string{"a:b"}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("after flags: %+v, want %+v", c, want)
	}
	if err := checkNodeAttestorConfig(&c); err != nil {
		t.Fatal(err)
	}
	nf, err := loadNodeAttestorFiles(&c)
	if err != nil {
		t.Fatal(err)
	}
	if len(nf.x509popRoots) != 1 || len(nf.clusters) != 2 || nf.clusters[0].Name != "two" || nf.clusters[1].Name != "one" ||
		nf.clusters[1].AllowedServiceAccounts[0] != "a:b" || len(nf.clusters[0].JWKS.Keys) != 1 {
		t.Errorf("node attestor files = %+v", nf)
	}
	as, err := nf.attestors(spiffeid.RequireTrustDomainFromString("example.org"))
	if err != nil {
		t.Fatal(err)
	}
	if len(as) != 2 || as[0].Name() != x509pop.Name || as[1].Name() != k8spsat.Name {
		t.Errorf("attestors = %v", as)
	}
}

// The trust domain of the node attestors: the stored bundle of a server
// with an identity, --trust-domain when bootstrapping, the trust bundle's
// when joining.
func TestAttestorTrustDomain(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	roots, err := server.LoadTrustBundle(selfSignedBundle(t, t.TempDir())) // example.org
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name        string
		c           serverConfig
		hasIdentity bool
		want        string
	}{
		{"bootstrap", serverConfig{Bootstrap: true, TrustDomain: "boot.org"}, false, "boot.org"},
		{"join", serverConfig{Join: "10.0.0.1:8443"}, false, "example.org"},
	} {
		td, err := attestorTrustDomain(&tc.c, dataDir, tc.hasIdentity, roots)
		if err != nil || td.Name() != tc.want {
			t.Errorf("%s: %v, %v; want %s", tc.name, td, err, tc.want)
		}
	}
	// A restart reads the bundle the server wrote; --trust-domain is ignored.
	c := serverConfig{Bootstrap: true, TrustDomain: "boot.org"}
	if _, err := attestorTrustDomain(&c, dataDir, true, nil); err == nil || !strings.Contains(err.Error(), "bundle.pem, which is missing") {
		t.Errorf("restart without a stored bundle: %v", err)
	}
	if err := os.MkdirAll(filepath.Join(dataDir, "server"), 0o700); err != nil {
		t.Fatal(err)
	}
	selfSignedBundle(t, filepath.Join(dataDir, "server"))
	if td, err := attestorTrustDomain(&c, dataDir, true, nil); err != nil || td.Name() != "example.org" {
		t.Errorf("restart: %v, %v; want example.org", td, err)
	}
	if err := checkBundleTrustDomain(readFile(t, filepath.Join(dataDir, "server", "bundle.pem")), spiffeid.RequireTrustDomainFromString("boot.org")); err == nil ||
		!strings.Contains(err.Error(), `belongs to trust domain "example.org"`) {
		t.Errorf("checkBundleTrustDomain of another trust domain: %v", err)
	}
}

func TestAgentAttestationBadInput(t *testing.T) {
	t.Parallel()
	tmp := t.TempDir()
	bundle := selfSignedBundle(t, tmp)
	prov := newProvisioning(t, tmp, "n")
	missing := filepath.Join(tmp, "missing.pem")
	twoKinds := writeTestFile(t, tmp, "two.json", []byte(`{"join_token": "t", "k8s_psat_cluster": "c1"}`))
	base := []string{"--server", "127.0.0.1:1", "--trust-bundle", bundle}

	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		code int
		want []string
	}{
		{"fail/join-token-and-x509pop", nil, []string{"--join-token", wellFormedToken, "--x509pop-cert", prov.certFile, "--x509pop-key", prov.keyFile}, exitUsage,
			[]string{"give one kind of node evidence, not --join-token and --x509pop-cert/--x509pop-key"}},
		{"fail/x509pop-and-k8s-psat", nil, []string{"--x509pop-cert", prov.certFile, "--x509pop-key", prov.keyFile, "--k8s-psat-cluster", "c1"}, exitUsage,
			[]string{"give one kind of node evidence"}},
		{"fail/config-two-kinds", nil, []string{"--config", twoKinds}, exitUsage, []string{"not --join-token and --k8s-psat-cluster"}},
		{"fail/x509pop-cert-without-key", nil, []string{"--x509pop-cert", prov.certFile}, exitUsage, []string{"--x509pop-cert needs --x509pop-key"}},
		{"fail/x509pop-key-without-cert", nil, []string{"--x509pop-key", prov.keyFile}, exitUsage, []string{"--x509pop-key needs --x509pop-cert"}},
		{"fail/token-path-without-cluster", nil, []string{"--k8s-psat-token-path", missing}, exitUsage,
			[]string{"--k8s-psat-token-path needs --k8s-psat-cluster"}},
		{"fail/bad-cluster-name", nil, []string{"--k8s-psat-cluster", "a/b"}, exitUsage, []string{`--k8s-psat-cluster "a/b"`}},
		{"fail/kubelet-token-without-url", nil, []string{"--join-token", wellFormedToken, "--k8s-kubelet-token", missing}, exitUsage,
			[]string{"--k8s-kubelet-token needs --k8s-kubelet-url"}},
		{"fail/kubelet-ca-and-insecure", nil, []string{"--join-token", wellFormedToken, "--k8s-kubelet-url", "https://127.0.0.1:10250",
			"--k8s-kubelet-ca", bundle, "--k8s-kubelet-insecure"}, exitUsage, []string{"exclude each other"}},
		{"fail/kubelet-bad-url", nil, []string{"--join-token", wellFormedToken, "--k8s-kubelet-url", "127.0.0.1:10250"}, exitUsage,
			[]string{`--k8s-kubelet-url "127.0.0.1:10250"`}},
		{"fail/kubelet-token-missing", nil, []string{"--join-token", wellFormedToken, "--k8s-kubelet-url", "https://127.0.0.1:10250", "--k8s-kubelet-token", missing}, exitError,
			[]string{"kubelet token (--k8s-kubelet-token)", "no such file"}},
		{"fail/kubelet-ca-not-pem", nil, []string{"--join-token", wellFormedToken, "--k8s-kubelet-url", "https://127.0.0.1:10250", "--k8s-kubelet-ca", prov.keyFile}, exitError,
			[]string{"kubelet CA"}},
		{"fail/x509pop-cert-missing", nil, []string{"--x509pop-cert", missing, "--x509pop-key", prov.keyFile}, exitError,
			[]string{"x509pop certificate (--x509pop-cert)", "no such file"}},
		{"fail/x509pop-key-mismatch", nil, []string{"--x509pop-cert", prov.certFile, "--x509pop-key", prov.otherKey}, exitError,
			[]string{"the private key does not match the leaf certificate"}},
		{"fail/x509pop-key-not-a-key", nil, []string{"--x509pop-cert", prov.certFile, "--x509pop-key", prov.certFile}, exitError,
			[]string{"holds no PEM private key"}},
		// The join token of the environment does not count as a second kind.
		{"fail/k8s-psat-token-missing", map[string]string{envJoinToken: wellFormedToken}, []string{"--k8s-psat-cluster", "c1", "--k8s-psat-token-path", missing}, exitError,
			[]string{"k8s_psat token (--k8s-psat-token-path)", "no such file", "projected service account token"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dataDir := filepath.Join(shortTempDir(t), "d")
			env := testEnv(t)
			for k, v := range tc.env {
				env[k] = v
			}
			r := meshca(t, env, append(append([]string{"agent", "--data-dir", dataDir}, base...), tc.args...)...)
			if r.code != tc.code {
				t.Errorf("exit %d, want %d; stderr %q", r.code, tc.code, r.stderr)
			}
			if !strings.HasPrefix(r.stderr, "meshca: ") {
				t.Errorf("stderr = %q, want it to start with \"meshca: \"", r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr = %q, want it to contain %q", r.stderr, w)
				}
			}
			if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
				t.Errorf("a refused start created the data directory: %v", err)
			}
		})
	}
}

// loadPrivateKey reads PKCS#8, SEC1 (after EC PARAMETERS) and PKCS#1 keys,
// and refuses encrypted keys and files of two keys.
func TestLoadPrivateKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ec, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	sec1, _ := x509.MarshalECPrivateKey(ec)
	params := pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 5, 43, 129, 4, 0, 34}})
	for _, tc := range []struct {
		name string
		data []byte
		want crypto.PublicKey
		err  string
	}{
		{"pkcs8", pkcs8PEM(t, ec), ec.Public(), ""},
		{"sec1-after-params", append(params, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})...), ec.Public(), ""},
		{"pkcs1", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}), rsaKey.Public(), ""},
		{"encrypted", pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{1}}), nil, "encrypted"},
		{"two-keys", append(pkcs8PEM(t, ec), pkcs8PEM(t, rsaKey)...), nil, "more than one private key"},
		{"public-key", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1}}), nil, `a "PUBLIC KEY" PEM block`},
		{"garbage", []byte("hello"), nil, "holds no PEM private key"},
	} {
		p := writeTestFile(t, dir, tc.name+".pem", tc.data)
		k, err := loadPrivateKey("key", p)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if eq, ok := k.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !eq.Equal(tc.want) {
			t.Errorf("%s: another key", tc.name)
		}
	}
}

func TestAgentAttestationConfigFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	p := writeTestFile(t, dir, "agent.json", []byte(`{"x509pop_cert": "node.pem", "x509pop_key": "/etc/node-key.pem",
		"k8s_kubelet_url": "https://127.0.0.1:10250", "k8s_kubelet_token": "token", "k8s_kubelet_ca": "kubelet-ca.pem"}`))
	c, err := loadAgentConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	want := agentConfig{X509PopCert: filepath.Join(dir, "node.pem"), X509PopKey: "/etc/node-key.pem",
		K8sKubeletURL: "https://127.0.0.1:10250", K8sKubeletToken: filepath.Join(dir, "token"), K8sKubeletCA: filepath.Join(dir, "kubelet-ca.pem")}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("loadAgentConfig = %+v, want %+v", c, want)
	}
	cmd := (&app{}).newAgentCommand()
	if err := cmd.Flags().Parse([]string{"--k8s-kubelet-ca", "", "--k8s-kubelet-insecure"}); err != nil {
		t.Fatal(err)
	}
	c.override(cmd.Flags(), &agentConfig{K8sKubeletInsecure: true})
	want.K8sKubeletCA, want.K8sKubeletInsecure = "", true
	if !reflect.DeepEqual(c, want) {
		t.Errorf("after flags: %+v, want %+v", c, want)
	}
	if err := checkAttestationConfig(&c); err != nil {
		t.Error(err)
	}
}

func TestAttestationHelp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"server", "--help"}, []string{"--x509pop-ca", "--k8s-psat-cluster", "--k8s-psat-issuer", "--k8s-psat-jwks", "--k8s-psat-audience",
			"--k8s-psat-allowed-sa", "k8s_psat_clusters", "jwks_file", "allowed_service_accounts", "x509pop_ca", "server/bundle.pem"}},
		{[]string{"agent", "--help"}, []string{"--x509pop-cert", "--x509pop-key", "--k8s-psat-cluster", "--k8s-psat-token-path", "--k8s-kubelet-url",
			"--k8s-kubelet-token", "--k8s-kubelet-ca", "--k8s-kubelet-insecure", "exactly one kind of evidence", "k8s_kubelet_insecure"}},
		{[]string{"x509", "mint", "--help"}, []string{"--addr", "MESHCA_ADDR", "--data-dir", "--timeout", "exclude each other", "ledger"}},
	} {
		r := meshca(t, nil, tc.args...)
		if r.code != exitOK {
			t.Errorf("meshca %s: exit %d, stderr %q", strings.Join(tc.args, " "), r.code, r.stderr)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("meshca %s does not mention %q", strings.Join(tc.args, " "), w)
			}
		}
		if strings.Contains(r.stdout, "\t") {
			t.Errorf("meshca %s: help contains tabs", strings.Join(tc.args, " "))
		}
	}
}
