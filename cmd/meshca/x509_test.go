package main

import (
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emmansun/gmsm/smx509"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/server"
)

func TestX509MintVerifiesWithOpenSSL(t *testing.T) {
	t.Parallel()
	requireOpenSSL(t)
	dataDir := t.TempDir()
	const id = "spiffe://example.org/ns/prod/sa/api"
	for _, p := range []string{ca.ProfileECDSA, ca.ProfileSM2} {
		out := filepath.Join(t.TempDir(), "out")
		r := mustSucceed(t, nil, "x509", "mint", "--spiffe-id", id, "--profile", p,
			"--data-dir", dataDir, "--out", out, "--dns", "api.prod.svc", "--dns", "api.example.org", "--ttl", "1h")
		if !strings.Contains(r.stdout, id) || !strings.Contains(r.stderr, devOnlyWarning) {
			t.Errorf("%s: stdout %q / stderr %q: want the SPIFFE ID and the development KEK warning", p, r.stdout, r.stderr)
		}
		checkMode(t, out, modeDir)
		checkMode(t, filepath.Join(out, "svid.pem"), modePublic)
		checkMode(t, filepath.Join(out, "key.pem"), modePrivate)
		checkMode(t, filepath.Join(out, "bundle.pem"), modePublic)
		checkLeafAndKey(t, p, filepath.Join(out, "svid.pem"), filepath.Join(out, "key.pem"), id)

		// Split svid.pem into the leaf and the intermediates, as a relying
		// party given the chain would.
		chain := splitPEM(t, readFile(t, filepath.Join(out, "svid.pem")))
		work := t.TempDir()
		leaf := writeTestFile(t, work, "leaf.pem", ca.EncodePEM(chain[0]))
		inter := writeTestFile(t, work, "intermediates.pem", ca.EncodePEM(chain[1:]...))
		bundle := filepath.Join(out, "bundle.pem")
		if p == ca.ProfileECDSA {
			opensslVerify(t, "-x509_strict", "-CAfile", bundle, "-untrusted", inter, leaf)
			c, err := x509.ParseCertificate(chain[0])
			if err != nil {
				t.Fatal(err)
			}
			checkLeafFields(t, p, c.DNSNames, c.NotBefore, c.NotAfter)
		} else {
			distid := "distid:" + ca.SM2SignerID
			opensslVerify(t, "-x509_strict", "-vfyopt", distid, "-CAfile", bundle, inter)
			opensslVerify(t, "-x509_strict", "-partial_chain", "-vfyopt", distid, "-CAfile", inter, leaf)
			c, err := smx509.ParseCertificate(chain[0])
			if err != nil {
				t.Fatal(err)
			}
			checkLeafFields(t, p, c.DNSNames, c.NotBefore, c.NotAfter)
		}
	}
}

func checkLeafFields(t *testing.T, profile string, dns []string, notBefore, notAfter time.Time) {
	t.Helper()
	if want := []string{"api.prod.svc", "api.example.org"}; !slices.Equal(dns, want) {
		t.Errorf("%s leaf DNS names = %v, want %v", profile, dns, want)
	}
	if got := notAfter.Sub(notBefore); got != time.Hour+ca.Backdate {
		t.Errorf("%s leaf lifetime = %s, want --ttl 1h plus backdating", profile, got)
	}
}

func TestX509MintJSON(t *testing.T) {
	t.Parallel()
	dataDir, out := t.TempDir(), filepath.Join(t.TempDir(), "out")
	kek := filepath.Join(t.TempDir(), "kek")
	if _, err := ca.CreateKEKFile(kek); err != nil {
		t.Fatal(err)
	}
	r := mustSucceed(t, nil, "--output", "json", "x509", "mint", "--spiffe-id", "spiffe://example.org/db",
		"--profile", "sm2", "--data-dir", dataDir, "--out", out, "--dns", "db.example.org,db", "--kek-file", kek)
	if strings.Contains(r.stderr, devOnlyWarning) {
		t.Errorf("warned about a development KEK although --kek-file was given: %q", r.stderr)
	}
	var rep map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("x509 mint --output json is not JSON: %v\n%s", err, r.stdout)
	}
	for k, want := range map[string]any{
		"spiffe_id": "spiffe://example.org/db", "profile": "sm2", "trust_domain": "example.org",
		"data_dir": dataDir, "ca_created": true,
	} {
		if rep[k] != want {
			t.Errorf("JSON %q = %v, want %v", k, rep[k], want)
		}
	}
	files, _ := rep["files"].(map[string]any)
	if files["svid"] != filepath.Join(out, "svid.pem") || files["key"] != filepath.Join(out, "key.pem") || files["bundle"] != filepath.Join(out, "bundle.pem") {
		t.Errorf("JSON files = %v", files)
	}
	if dns, _ := rep["dns_names"].([]any); len(dns) != 2 {
		t.Errorf("JSON dns_names = %v, want two names", rep["dns_names"])
	}
	for _, k := range []string{"serial", "not_before", "not_after"} {
		if s, _ := rep[k].(string); s == "" {
			t.Errorf("JSON %q missing", k)
		}
	}
	if strings.Contains(r.stdout, "PRIVATE KEY") {
		t.Error("x509 mint printed key material")
	}
}

// mintInto mints an ECDSA X509-SVID for id from the local CA in dataDir
// into a new directory, creating the CA if needed, and returns the directory.
func mintInto(t *testing.T, env map[string]string, dataDir, id string, extra ...string) (string, result) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "out")
	r := mustSucceed(t, env, append([]string{"x509", "mint", "--spiffe-id", id, "--profile", "ecdsa", "--data-dir", dataDir, "--out", out}, extra...)...)
	return out, r
}

func TestX509MintReopensCA(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	first, r := mintInto(t, nil, dataDir, "spiffe://meshca.local/db")
	if !strings.Contains(r.stdout, "created") {
		t.Errorf("first mint does not say the CA was created:\n%s", r.stdout)
	}
	second, r := mintInto(t, nil, dataDir, "spiffe://meshca.local/web")
	if !strings.Contains(r.stdout, "reopened") {
		t.Errorf("second mint does not say the CA was reopened:\n%s", r.stdout)
	}
	if got, want := readFile(t, filepath.Join(second, "bundle.pem")), readFile(t, filepath.Join(first, "bundle.pem")); string(got) != string(want) {
		t.Error("the second mint used another root than the first")
	}
}

func TestX509MintWrongKEKChangesNothing(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	mintInto(t, nil, dataDir, "spiffe://meshca.local/db")
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
		out := filepath.Join(t.TempDir(), "out")
		r := meshca(t, tc.env, append([]string{"x509", "mint", "--spiffe-id", "spiffe://meshca.local/db", "--profile", "ecdsa", "--data-dir", dataDir, "--out", out}, tc.args...)...)
		if r.code != exitError {
			t.Errorf("%s: exit %d, want %d", tc.name, r.code, exitError)
		}
		if !strings.HasPrefix(r.stderr, "meshca: ") || !strings.Contains(r.stderr, "key-encryption key") || !strings.Contains(r.stderr, other) {
			t.Errorf("%s: stderr = %q, want an error naming the key-encryption key %s", tc.name, r.stderr, other)
		}
		if d := diffSnapshots(before, treeSnapshot(t, dataDir)); len(d) > 0 {
			t.Errorf("%s: a wrong KEK changed the data directory: %v", tc.name, d)
		}
	}
}

func TestX509MintKEKKeptElsewhere(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	kek := filepath.Join(t.TempDir(), "kek")
	if _, err := ca.CreateKEKFile(kek); err != nil {
		t.Fatal(err)
	}
	_, r := mintInto(t, nil, dataDir, "spiffe://meshca.local/db", "--kek-file", kek)
	if strings.Contains(r.stderr, devOnlyWarning) {
		t.Errorf("warned about a development KEK although --kek-file was given: %q", r.stderr)
	}
	if _, err := os.Stat(server.KEKPath(dataDir)); err == nil {
		t.Fatal("created a KEK in the data directory although --kek-file was given")
	}

	// Without the KEK, mint must not create one the CA cannot use.
	before := treeSnapshot(t, dataDir)
	r = meshca(t, nil, "x509", "mint", "--spiffe-id", "spiffe://meshca.local/db", "--profile", "ecdsa", "--data-dir", dataDir, "--out", filepath.Join(t.TempDir(), "out"))
	if r.code != exitError || !strings.Contains(r.stderr, "--kek-file") {
		t.Errorf("reopen without the KEK: exit %d, stderr %q; want exit 1 and a hint at --kek-file", r.code, r.stderr)
	}
	if d := diffSnapshots(before, treeSnapshot(t, dataDir)); len(d) > 0 {
		t.Errorf("reopen without the KEK changed the data directory: %v", d)
	}
	if _, r = mintInto(t, map[string]string{envKEKFile: kek}, dataDir, "spiffe://meshca.local/db"); !strings.Contains(r.stdout, "reopened") {
		t.Errorf("reopen with MESHCA_KEK_FILE did not reopen:\n%s", r.stdout)
	}
}

func TestX509MintBadInputs(t *testing.T) {
	t.Parallel()
	// existing holds a CA of trust domain meshca.local.
	existing := t.TempDir()
	mintInto(t, nil, existing, "spiffe://meshca.local/seed")

	for _, tc := range []struct {
		name     string
		existing bool // use the existing data directory instead of a new one
		args     []string
		code     int
		want     string
	}{
		{"fail/invalid-spiffe-id", false, []string{"--spiffe-id", "spiffe://Bad Domain/x", "--profile", "ecdsa"}, exitError, "invalid_spiffe_id"},
		{"fail/not-spiffe", false, []string{"--spiffe-id", "https://example.org/x", "--profile", "ecdsa"}, exitError, "invalid_spiffe_id"},
		{"fail/no-path", false, []string{"--spiffe-id", "spiffe://example.org", "--profile", "sm2"}, exitError, "needs a path"},
		{"fail/unknown-profile", false, []string{"--spiffe-id", "spiffe://example.org/x", "--profile", "rsa"}, exitError, `unknown profile "rsa"`},
		{"fail/bad-dns", false, []string{"--spiffe-id", "spiffe://example.org/x", "--profile", "ecdsa", "--dns", "Bad_Name"}, exitError, "invalid_dns_name"},
		{"fail/negative-ttl", false, []string{"--spiffe-id", "spiffe://example.org/x", "--profile", "ecdsa", "--ttl", "-1h"}, exitError, "invalid_ttl"},
		{"fail/zero-ttl", false, []string{"--spiffe-id", "spiffe://example.org/x", "--profile", "ecdsa", "--ttl", "0s"}, exitError, "invalid_ttl"},
		{"fail/unparsable-ttl", false, []string{"--spiffe-id", "spiffe://example.org/x", "--profile", "ecdsa", "--ttl", "soon"}, exitUsage, `"--ttl"`},
		{"fail/trust-domain-mismatch", true, []string{"--spiffe-id", "spiffe://other.org/x", "--profile", "ecdsa"}, exitError, `belongs to trust domain "meshca.local"`},
		{"fail/trust-domain-mismatch-sm2", true, []string{"--spiffe-id", "spiffe://other.org/x", "--profile", "sm2"}, exitError, `not "other.org"`},
		{"fail/missing-spiffe-id", false, []string{"--profile", "ecdsa"}, exitUsage, `required flag(s) "spiffe-id" not set`},
		{"fail/missing-profile", true, []string{"--spiffe-id", "spiffe://meshca.local/x"}, exitUsage, `required flag(s) "profile" not set`},
		{"fail/unknown-flag", true, []string{"--spiffe-id", "spiffe://meshca.local/x", "--profile", "ecdsa", "--bogus"}, exitUsage, "unknown flag: --bogus"},
		{"fail/extra-argument", true, []string{"--spiffe-id", "spiffe://meshca.local/x", "--profile", "ecdsa", "extra"}, exitUsage, `unknown command "extra"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dataDir := filepath.Join(t.TempDir(), "new")
			if tc.existing {
				dataDir = existing
			}
			before := treeSnapshot(t, existing)
			out := filepath.Join(t.TempDir(), "out")
			args := append([]string{"x509", "mint", "--data-dir", dataDir, "--out", out}, tc.args...)
			r := meshca(t, nil, args...)
			if r.code != tc.code {
				t.Errorf("exit %d, want %d; stderr %q", r.code, tc.code, r.stderr)
			}
			if !strings.HasPrefix(r.stderr, "meshca: ") && !strings.Contains(r.stderr, "\nmeshca: ") {
				t.Errorf("stderr = %q, want a \"meshca: \" error", r.stderr)
			}
			if !strings.Contains(r.stderr, tc.want) {
				t.Errorf("stderr = %q, want it to contain %q", r.stderr, tc.want)
			}
			if r.stdout != "" {
				t.Errorf("stdout = %q, want nothing", r.stdout)
			}
			if _, err := os.Stat(out); err == nil {
				t.Errorf("a refused request created --out %s", out)
			}
			if !tc.existing {
				if _, err := os.Stat(dataDir); err == nil {
					t.Errorf("a refused request created the data directory %s", dataDir)
				}
			}
			if d := diffSnapshots(before, treeSnapshot(t, existing)); len(d) > 0 {
				t.Errorf("a refused request changed the existing data directory: %v", d)
			}
		})
	}
}

func TestX509MintMissingFlags(t *testing.T) {
	t.Parallel()
	r := meshca(t, nil, "x509", "mint")
	if r.code != exitUsage {
		t.Errorf("exit %d, want %d", r.code, exitUsage)
	}
	for _, f := range []string{"spiffe-id", "profile", "data-dir", "out"} {
		if !strings.Contains(r.stderr, `"`+f+`"`) {
			t.Errorf("stderr = %q does not name the missing --%s", r.stderr, f)
		}
	}
}

// TestX509MintThroughServer mints X509-SVIDs of both profiles through the
// operator API of an in-process `meshca server`: the chains verify with
// openssl, and the server refuses a SPIFFE ID of another trust domain.
func TestX509MintThroughServer(t *testing.T) {
	t.Parallel()
	requireOpenSSL(t)
	env := testEnv(t)
	dataDir := shortTempDir(t)
	sock := filepath.Join(dataDir, server.AdminSocketName)
	addr := "unix://" + sock
	ports := freePorts(t, 2)
	srv := startServer(t, env, sock, "--data-dir", dataDir, "--node-id", "s1", "--raft-addr", ports[0], "--api-addr", ports[1],
		"--bootstrap", "--trust-domain", "example.org")
	waitLeader(t, env, sock, "s1")
	waitFor(t, 10*time.Second, "bootstrap state written", func() (bool, string) {
		return strings.Contains(srv.stderr.String(), bootstrappedLog), "no " + bootstrappedLog + " in the log"
	})

	const id = "spiffe://example.org/ops/tool"
	for _, p := range []string{ca.ProfileECDSA, ca.ProfileSM2} {
		out := filepath.Join(t.TempDir(), "out")
		args := []string{"x509", "mint", "--spiffe-id", id, "--out", out, "--dns", "api.prod.svc", "--dns", "api.example.org", "--ttl", "1h"}
		runEnv := env
		if p == ca.ProfileECDSA {
			// $MESHCA_ADDR selects the server; the profile defaults to ecdsa.
			runEnv = map[string]string{"HOME": env["HOME"], envAddr: addr}
			args = append(args, "--output", "json")
		} else {
			args = append(args, "--addr", addr, "--profile", p)
		}
		r := mustSucceed(t, runEnv, args...)
		if p == ca.ProfileECDSA {
			var rep map[string]any
			if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
				t.Fatalf("x509 mint --output json: %v\n%s", err, r.stdout)
			}
			if rep["server"] != addr || rep["trust_domain"] != "example.org" || rep["profile"] != p || rep["spiffe_id"] != id {
				t.Errorf("JSON report = %v", rep)
			}
		} else if !strings.Contains(r.stdout, id) || !strings.Contains(r.stdout, addr) || !strings.Contains(r.stdout, "ledger") {
			t.Errorf("x509 mint --addr:\n%s", r.stdout)
		}
		if strings.Contains(r.stdout+r.stderr, "PRIVATE KEY") || strings.Contains(r.stderr, devOnlyWarning) {
			t.Errorf("%s: unexpected output: stdout %q, stderr %q", p, r.stdout, r.stderr)
		}
		checkMode(t, out, modeDir)
		checkMode(t, filepath.Join(out, "svid.pem"), modePublic)
		checkMode(t, filepath.Join(out, "key.pem"), modePrivate)
		checkMode(t, filepath.Join(out, "bundle.pem"), modePublic)
		checkLeafAndKey(t, p, filepath.Join(out, "svid.pem"), filepath.Join(out, "key.pem"), id)

		chain := splitPEM(t, readFile(t, filepath.Join(out, "svid.pem")))
		work := t.TempDir()
		leaf := writeTestFile(t, work, "leaf.pem", ca.EncodePEM(chain[0]))
		inter := writeTestFile(t, work, "intermediates.pem", ca.EncodePEM(chain[1:]...))
		bundle := filepath.Join(out, "bundle.pem")
		if p == ca.ProfileECDSA {
			opensslVerify(t, "-x509_strict", "-CAfile", bundle, "-untrusted", inter, leaf)
			c, err := x509.ParseCertificate(chain[0])
			if err != nil {
				t.Fatal(err)
			}
			checkLeafFields(t, p, c.DNSNames, c.NotBefore, c.NotAfter)
			// The server's bundle holds the same ECDSA root.
			if got, want := readFile(t, bundle), readFile(t, filepath.Join(dataDir, "server", "bundle.pem")); string(got) != string(want) {
				t.Error("bundle.pem is not the server's ECDSA trust bundle")
			}
		} else {
			distid := "distid:" + ca.SM2SignerID
			opensslVerify(t, "-x509_strict", "-vfyopt", distid, "-CAfile", bundle, inter)
			opensslVerify(t, "-x509_strict", "-partial_chain", "-vfyopt", distid, "-CAfile", inter, leaf)
			c, err := smx509.ParseCertificate(chain[0])
			if err != nil {
				t.Fatal(err)
			}
			checkLeafFields(t, p, c.DNSNames, c.NotBefore, c.NotAfter)
		}
	}
	if !strings.Contains(srv.stderr.String(), "x509.mint") {
		t.Errorf("the server did not audit the minting:\n%s", srv.stderr)
	}

	// A SPIFFE ID of another trust domain: the server's reason, nothing written.
	out := filepath.Join(t.TempDir(), "out")
	r := meshca(t, env, "x509", "mint", "--spiffe-id", "spiffe://other.org/x", "--addr", addr, "--out", out)
	if r.code != exitError || !strings.HasPrefix(r.stderr, "meshca: mint ecdsa X509-SVID for spiffe://other.org/x: ") ||
		!strings.Contains(r.stderr, "example.org") || strings.Contains(r.stderr, "rpc error") {
		t.Errorf("foreign trust domain: exit %d, stderr %q; want exit 1 with the server's reason", r.code, r.stderr)
	}
	t.Logf("foreign trust domain: %s", strings.TrimSpace(r.stderr))
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a refused mint created --out: %v", err)
	}
}

// The mode of x509 mint: --addr (or $MESHCA_ADDR) or --data-dir, not both;
// mistakes are found before the server is dialed or anything is written.
func TestX509MintModes(t *testing.T) {
	t.Parallel()
	dir := shortTempDir(t)
	missing := filepath.Join(dir, "missing.sock")
	const id = "spiffe://example.org/x"
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		code int
		want []string
	}{
		{"fail/addr-and-data-dir", nil, []string{"--spiffe-id", id, "--profile", "ecdsa", "--addr", "unix://" + missing, "--data-dir", dir}, exitUsage,
			[]string{"--addr and --data-dir exclude each other"}},
		{"fail/neither", nil, []string{"--spiffe-id", id}, exitUsage,
			[]string{`required flag(s) "data-dir", "profile" not set`, "--addr unix:///path/admin.sock", "MESHCA_ADDR"}},
		{"fail/addr-missing-out", nil, []string{"--spiffe-id", id, "--addr", "unix://" + missing, "--out", ""}, exitUsage,
			[]string{`required flag(s) "out" not set`}},
		{"fail/addr-with-kek-file", nil, []string{"--spiffe-id", id, "--addr", "unix://" + missing, "--kek-file", "k"}, exitUsage,
			[]string{"--kek-file is only used with --data-dir"}},
		{"fail/data-dir-with-timeout", nil, []string{"--spiffe-id", id, "--profile", "ecdsa", "--data-dir", filepath.Join(dir, "ca"), "--timeout", "5s"}, exitUsage,
			[]string{"--timeout is only used with --addr"}},
		{"fail/addr-fractional-ttl", nil, []string{"--spiffe-id", id, "--addr", "unix://" + missing, "--ttl", "1500ms"}, exitUsage,
			[]string{"--ttl 1.5s", "whole seconds"}},
		{"fail/addr-bad-profile", nil, []string{"--spiffe-id", id, "--addr", "unix://" + missing, "--profile", "rsa"}, exitError,
			[]string{`unknown profile "rsa"`}},
		{"fail/addr-bad-spiffe-id", nil, []string{"--spiffe-id", "spiffe://example.org", "--addr", "unix://" + missing}, exitError,
			[]string{"needs a path"}},
		{"fail/addr-unreachable", nil, []string{"--spiffe-id", id, "--addr", "unix://" + missing}, exitError,
			[]string{"cannot reach the server's admin socket at " + missing}},
		{"fail/env-addr-unreachable", map[string]string{envAddr: "unix://" + missing}, []string{"--spiffe-id", id}, exitError,
			[]string{"cannot reach the server's admin socket at " + missing}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out := filepath.Join(t.TempDir(), "out")
			args := append([]string{"x509", "mint", "--out", out}, tc.args...)
			r := meshca(t, tc.env, args...)
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
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("a refused mint created --out: %v", err)
			}
			if _, err := os.Stat(filepath.Join(dir, "ca")); !os.IsNotExist(err) {
				t.Errorf("a refused mint created a local CA: %v", err)
			}
		})
	}

	// --data-dir wins over $MESHCA_ADDR: the offline mode.
	out := filepath.Join(t.TempDir(), "out")
	r := mustSucceed(t, map[string]string{envAddr: "unix://" + missing}, "x509", "mint", "--spiffe-id", id, "--profile", "ecdsa",
		"--data-dir", t.TempDir(), "--out", out)
	if !strings.Contains(r.stdout, "created") {
		t.Errorf("x509 mint --data-dir with $MESHCA_ADDR set:\n%s", r.stdout)
	}
}
