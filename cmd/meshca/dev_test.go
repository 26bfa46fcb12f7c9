package main

import (
	"bytes"
	"crypto"
	"encoding/json"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emmansun/gmsm/smx509"
	"github.com/meshca/meshca/ca"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const devOnlyWarning = "for development only"

// devFiles lists what dev writes under the data directory, with modes.
func devFiles(dataDir string) map[string]os.FileMode {
	files := map[string]os.FileMode{
		filepath.Join(dataDir, "dev"):                       modeDir,
		filepath.Join(dataDir, "dev", "bundle.pem"):         modePublic,
		filepath.Join(dataDir, "dev", "bundle.spiffe.json"): modePublic,
	}
	for _, p := range []string{ca.ProfileECDSA, ca.ProfileSM2} {
		d := filepath.Join(dataDir, "dev", p)
		files[d] = modeDir
		for _, f := range []string{"svid.pem", "leaf.pem", "intermediates.pem", "bundle.pem"} {
			files[filepath.Join(d, f)] = modePublic
		}
		files[filepath.Join(d, "key.pem")] = modePrivate
	}
	return files
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkLeafAndKey parses a written leaf and key, checks the leaf's SPIFFE
// ID and that the key is the leaf's, and returns the leaf's serial.
func checkLeafAndKey(t *testing.T, profile, svidPath, keyPath, wantID string) *big.Int {
	t.Helper()
	certs := splitPEM(t, readFile(t, svidPath))
	if len(certs) != 2 {
		t.Fatalf("%s holds %d certificates, want leaf and intermediate", svidPath, len(certs))
	}
	keyPEM := splitPEM(t, readFile(t, keyPath))
	if len(keyPEM) != 1 || !bytes.HasPrefix(readFile(t, keyPath), []byte("-----BEGIN PRIVATE KEY-----")) {
		t.Fatalf("%s is not one PKCS#8 PRIVATE KEY block", keyPath)
	}
	var (
		uris   []string
		pub    crypto.PublicKey
		serial *big.Int
		key    any
		err    error
	)
	p, perr := ca.ProfileByName(profile)
	if perr != nil {
		t.Fatal(perr)
	}
	c, perr := p.ParseCertificate(certs[0])
	if perr != nil {
		t.Fatalf("parse %s leaf: %v", profile, perr)
	}
	uris, pub, serial = c.URIs, c.PublicKey, c.SerialNumber
	// smx509 parses PKCS#8 keys of both profiles.
	key, err = smx509.ParsePKCS8PrivateKey(keyPEM[0])
	if err != nil {
		t.Fatalf("parse %s key: %v", profile, err)
	}
	if len(uris) != 1 || uris[0] != wantID {
		t.Errorf("%s leaf URI SANs = %v, want [%s]", profile, uris, wantID)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		t.Fatalf("%s key is a %T", profile, key)
	}
	if eq, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !eq.Equal(pub) {
		t.Errorf("%s key.pem does not hold the leaf's key", profile)
	}
	return serial
}

func TestDevCreatesThenReopens(t *testing.T) {
	t.Parallel()
	dataDir := filepath.Join(t.TempDir(), "data")
	first := mustSucceed(t, nil, "dev", "--data-dir", dataDir)
	if !strings.Contains(first.stdout, "created") {
		t.Errorf("first run does not say the CA was created:\n%s", first.stdout)
	}
	if !strings.Contains(first.stderr, devOnlyWarning) || !strings.Contains(first.stderr, filepath.Join(dataDir, "kek")) {
		t.Errorf("first run does not warn about the KEK in the data directory: %q", first.stderr)
	}
	checkMode(t, dataDir, modeDir)
	for p, mode := range devFiles(dataDir) {
		checkMode(t, p, mode)
	}
	checkMode(t, filepath.Join(dataDir, "kek"), modePrivate)

	wantID := fmt.Sprintf("spiffe://meshca.local/dev/uid/%d", os.Getuid())
	bundles := map[string][]byte{}
	serials := map[string]*big.Int{}
	for _, p := range []string{ca.ProfileECDSA, ca.ProfileSM2} {
		d := filepath.Join(dataDir, "dev", p)
		serials[p] = checkLeafAndKey(t, p, filepath.Join(d, "svid.pem"), filepath.Join(d, "key.pem"), wantID)
		if !strings.Contains(first.stdout, fmt.Sprintf("%x", serials[p])) {
			t.Errorf("summary does not show the %s serial %x", p, serials[p])
		}
		// svid.pem is leaf.pem followed by intermediates.pem.
		split := append(readFile(t, filepath.Join(d, "leaf.pem")), readFile(t, filepath.Join(d, "intermediates.pem"))...)
		if !bytes.Equal(readFile(t, filepath.Join(d, "svid.pem")), split) {
			t.Errorf("%s svid.pem is not leaf.pem + intermediates.pem", p)
		}
		if n := len(splitPEM(t, readFile(t, filepath.Join(d, "bundle.pem")))); n != 1 {
			t.Errorf("%s bundle.pem holds %d roots, want 1", p, n)
		}
		bundles[p] = readFile(t, filepath.Join(d, "bundle.pem"))
	}
	all := readFile(t, filepath.Join(dataDir, "dev", "bundle.pem"))
	if !bytes.Equal(all, append(bytes.Clone(bundles[ca.ProfileECDSA]), bundles[ca.ProfileSM2]...)) {
		t.Error("dev/bundle.pem is not the ecdsa root followed by the sm2 root")
	}
	for _, out := range []string{first.stdout, first.stderr} {
		if strings.Contains(out, "PRIVATE KEY") || strings.Contains(out, strings.TrimSpace(string(readFile(t, filepath.Join(dataDir, "kek"))))) {
			t.Error("dev printed key material")
		}
	}

	second := mustSucceed(t, nil, "dev", "--data-dir", dataDir)
	if !strings.Contains(second.stdout, "reopened") {
		t.Errorf("second run does not say the CA was reopened:\n%s", second.stdout)
	}
	if got := readFile(t, filepath.Join(dataDir, "dev", "bundle.pem")); !bytes.Equal(got, all) {
		t.Error("reopening changed dev/bundle.pem: the root is not the same")
	}
	for _, p := range []string{ca.ProfileECDSA, ca.ProfileSM2} {
		d := filepath.Join(dataDir, "dev", p)
		if got := readFile(t, filepath.Join(d, "bundle.pem")); !bytes.Equal(got, bundles[p]) {
			t.Errorf("reopening changed the %s root", p)
		}
		if s := checkLeafAndKey(t, p, filepath.Join(d, "svid.pem"), filepath.Join(d, "key.pem"), wantID); s.Cmp(serials[p]) == 0 {
			t.Errorf("second run did not mint a new %s SVID", p)
		}
	}
}

// devJSON runs dev with --output json and decodes its report.
func devJSON(t *testing.T, env map[string]string, args ...string) devReport {
	t.Helper()
	r := mustSucceed(t, env, append([]string{"dev", "--output", "json"}, args...)...)
	var rep devReport
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("dev --output json is not a devReport: %v\n%s", err, r.stdout)
	}
	if dec.More() {
		t.Fatalf("dev --output json printed more than one JSON value:\n%s", r.stdout)
	}
	return rep
}

func TestDevJSON(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	rep := devJSON(t, nil, "--data-dir", dataDir, "--trust-domain", "example.org")
	if rep.DataDir != dataDir || rep.TrustDomain != "example.org" || !rep.CACreated {
		t.Errorf("report = %+v, want data dir %s, trust domain example.org, CA created", rep, dataDir)
	}
	if rep.KEK.Source != "data-dir" || !rep.KEK.Created || rep.KEK.ID == "" || rep.Rotations == nil {
		t.Errorf("report KEK/rotations = %+v / %v", rep.KEK, rep.Rotations)
	}
	if len(rep.SVIDs) != 2 || rep.SVIDs[0].Profile != ca.ProfileECDSA || rep.SVIDs[1].Profile != ca.ProfileSM2 {
		t.Fatalf("report SVIDs = %+v, want ecdsa then sm2", rep.SVIDs)
	}
	for _, s := range rep.SVIDs {
		if want := fmt.Sprintf("spiffe://example.org/dev/uid/%d", os.Getuid()); s.SPIFFEID != want {
			t.Errorf("%s spiffe_id = %q, want %q", s.Profile, s.SPIFFEID, want)
		}
		if got := s.NotAfter.Sub(s.NotBefore); got != ca.DefaultSVIDTTL+ca.Backdate {
			t.Errorf("%s lifetime = %s, want %s plus backdating", s.Profile, got, ca.DefaultSVIDTTL)
		}
		serial := checkLeafAndKey(t, s.Profile, s.Files.SVID, s.Files.Key, s.SPIFFEID)
		if s.Serial != fmt.Sprintf("%x", serial) {
			t.Errorf("%s serial = %s, leaf has %x", s.Profile, s.Serial, serial)
		}
	}
	if again := devJSON(t, nil, "--data-dir", dataDir); again.CACreated || again.TrustDomain != "example.org" || again.KEK.Created {
		t.Errorf("reopen report = %+v, want the example.org CA and KEK reopened", again)
	}
}

func TestDevVerifiesWithOpenSSLAndGoSPIFFE(t *testing.T) {
	t.Parallel()
	requireOpenSSL(t)
	// A space in the path proves the printed commands are quoted for pasting.
	rep := devJSON(t, nil, "--data-dir", filepath.Join(t.TempDir(), "my data"))
	for _, s := range rep.SVIDs {
		for _, c := range s.Verify {
			out, err := exec.Command("sh", "-c", c).CombinedOutput()
			if err != nil || !strings.Contains(string(out), ": OK") {
				t.Errorf("printed %s verify command failed: %s\n%v\n%s", s.Profile, c, err, out)
			}
		}
	}
	b, err := spiffebundle.Parse(spiffeid.RequireTrustDomainFromString("meshca.local"), readFile(t, rep.SPIFFEBundle))
	if err != nil {
		t.Fatalf("go-spiffe cannot parse bundle.spiffe.json: %v", err)
	}
	roots := splitPEM(t, readFile(t, rep.SVIDs[0].Files.Bundle))
	if got := b.X509Authorities(); len(got) != 1 || !bytes.Equal(got[0].Raw, roots[0]) {
		t.Errorf("bundle.spiffe.json holds %d authorities, want the ECDSA root only", len(got))
	}
}

func TestDevDefaultDataDir(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	r := mustSucceed(t, map[string]string{envDataDir: dataDir}, "dev")
	if !strings.Contains(r.stdout, dataDir) {
		t.Errorf("summary does not name the data directory %s:\n%s", dataDir, r.stdout)
	}
	for p, mode := range devFiles(dataDir) {
		checkMode(t, p, mode)
	}
}

func TestDefaultDataDir(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"ok/meshca-data-dir", map[string]string{envDataDir: "/m", "XDG_DATA_HOME": "/x", "HOME": "/h"}, "/m"},
		{"ok/xdg", map[string]string{"XDG_DATA_HOME": "/x", "HOME": "/h"}, "/x/meshca"},
		{"ok/relative-xdg-ignored", map[string]string{"XDG_DATA_HOME": "x", "HOME": "/h"}, "/h/.local/share/meshca"},
		{"ok/home", map[string]string{"HOME": "/h"}, "/h/.local/share/meshca"},
		{"fail/nothing", nil, ""},
	} {
		got, err := defaultDataDir(func(k string) string { return tc.env[k] })
		if got != tc.want || (err != nil) != (tc.want == "") {
			t.Errorf("%s: defaultDataDir() = %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

func TestDevWrongKEKChangesNothing(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	mustSucceed(t, nil, "dev", "--data-dir", dataDir)
	other := filepath.Join(t.TempDir(), "other.kek")
	if _, err := ca.CreateKEKFile(other); err != nil {
		t.Fatal(err)
	}
	before := treeSnapshot(t, dataDir)
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
	}{
		{"flag", nil, []string{"--kek-file", other}},
		{"env", map[string]string{envKEKFile: other}, nil},
	} {
		r := meshca(t, tc.env, append([]string{"dev", "--data-dir", dataDir}, tc.args...)...)
		if r.code != exitError {
			t.Errorf("%s: exit %d, want %d", tc.name, r.code, exitError)
		}
		if !strings.HasPrefix(r.stderr, "meshca: ") || !strings.Contains(r.stderr, "key-encryption key") || !strings.Contains(r.stderr, other) {
			t.Errorf("%s: stderr = %q, want an error naming the key-encryption key %s", tc.name, r.stderr, other)
		}
		if r.stdout != "" {
			t.Errorf("%s: stdout = %q, want nothing", tc.name, r.stdout)
		}
		if d := diffSnapshots(before, treeSnapshot(t, dataDir)); len(d) > 0 {
			t.Errorf("%s: a wrong KEK changed the data directory: %v", tc.name, d)
		}
	}
}

func TestDevKEKKeptElsewhere(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	kek := filepath.Join(t.TempDir(), "kek")
	if _, err := ca.CreateKEKFile(kek); err != nil {
		t.Fatal(err)
	}
	r := mustSucceed(t, nil, "dev", "--data-dir", dataDir, "--kek-file", kek)
	if strings.Contains(r.stderr, devOnlyWarning) {
		t.Errorf("warned about a development KEK although --kek-file was given: %q", r.stderr)
	}
	inDir := filepath.Join(dataDir, kekFileName)
	if _, err := os.Stat(inDir); err == nil {
		t.Fatal("created a KEK in the data directory although --kek-file was given")
	}

	// Without the KEK, dev must not create one the CA cannot use.
	before := treeSnapshot(t, dataDir)
	r = meshca(t, nil, "dev", "--data-dir", dataDir)
	if r.code != exitError || !strings.Contains(r.stderr, "--kek-file") {
		t.Errorf("reopen without the KEK: exit %d, stderr %q; want exit 1 and a hint at --kek-file", r.code, r.stderr)
	}
	if d := diffSnapshots(before, treeSnapshot(t, dataDir)); len(d) > 0 {
		t.Errorf("reopen without the KEK changed the data directory: %v", d)
	}

	r = mustSucceed(t, map[string]string{envKEKFile: kek}, "dev", "--data-dir", dataDir)
	if !strings.Contains(r.stdout, "reopened") {
		t.Errorf("reopen with MESHCA_KEK_FILE did not reopen:\n%s", r.stdout)
	}
}

func TestDevTrustDomain(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	if rep := devJSON(t, nil, "--data-dir", dataDir, "--trust-domain", "example.org"); rep.TrustDomain != "example.org" {
		t.Fatalf("trust domain = %q, want example.org", rep.TrustDomain)
	}
	// Without --trust-domain, dev reopens whatever the data directory holds.
	if rep := devJSON(t, nil, "--data-dir", dataDir); rep.TrustDomain != "example.org" || rep.CACreated {
		t.Errorf("reopen: trust domain %q, created %v; want example.org reopened", rep.TrustDomain, rep.CACreated)
	}
	before := treeSnapshot(t, dataDir)
	for _, tc := range []struct{ td, want string }{
		{"other.org", `belongs to trust domain "example.org"`},
		{"Not A Domain", "--trust-domain"},
	} {
		r := meshca(t, nil, "dev", "--data-dir", dataDir, "--trust-domain", tc.td)
		if r.code != exitError || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("--trust-domain %q: exit %d, stderr %q; want exit 1 mentioning %q", tc.td, r.code, r.stderr, tc.want)
		}
	}
	if d := diffSnapshots(before, treeSnapshot(t, dataDir)); len(d) > 0 {
		t.Errorf("refused trust domains changed the data directory: %v", d)
	}
}
