package main

import (
	"crypto"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/meshca/meshca/server"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func (a *app) newX509Command() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "x509",
		Short: "X.509 certificates (X509-SVIDs)",
		Args:  cobra.NoArgs, // an unknown subcommand is an error, not a help page
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cmd.Help()
		},
	}
	cmd.AddCommand(a.newX509MintCommand())
	return cmd
}

const x509MintLong = `mint issues one X509-SVID for --spiffe-id and writes into --out:
  svid.pem    the leaf, then the intermediates (mode 0644)
  key.pem     the leaf's private key, PKCS#8, generated here (mode 0600)
  bundle.pem  the roots of the profile (mode 0644)
--out is created (mode 0700) if needed; files already there are replaced.

It mints in one of two ways:

Through a running server, with --addr unix:///path/admin.sock (or
$MESHCA_ADDR, unless --data-dir is given), or from another host --addr
host:port of a server started with --admin-addr, over mutual TLS with your
admin X509-SVID (--admin-cert, --admin-key) and the trust bundle
(--trust-bundle): the key is generated here and only
a CSR goes to the server's operator API, which signs it with its intermediate
of --profile (default ecdsa), records the certificate in the replicated ledger
and audits it, like every issuance. The SPIFFE ID must be of the server's trust
domain, and --ttl whole seconds. --timeout bounds the call. Whoever can open
the admin socket can mint any identity of the trust domain.

Offline, with --data-dir D (then --profile is required): straight from the
local CA in D. If D holds no CA yet, one is created for the trust domain of
--spiffe-id; an existing CA must be of that trust domain. This local CA
(<data-dir>/ca/state.json) is a CA of its own, not the trust domain of a
"meshca dev" or "meshca server", whose roots live in the replicated state:
mint refuses the data directory of a server or dev and points to --addr. The
key-encryption key is --kek-file F, else $MESHCA_KEK_FILE, else <data-dir>/kek,
created if needed, for development only. Offline minting is neither authorized
nor recorded: whoever can read the data directory and its KEK can mint any
identity of the trust domain.

--addr and --data-dir exclude each other.`

// mintReport is what x509 mint prints when it mints offline.
type mintReport struct {
	DataDir     string   `json:"data_dir"`
	TrustDomain string   `json:"trust_domain"`
	CACreated   bool     `json:"ca_created"`
	KEK         kekInfo  `json:"kek"`
	Rotations   []string `json:"rotations"`
	svidReport
}

// serverMintReport is what x509 mint prints when it mints through a server.
type serverMintReport struct {
	// Server is the operator address of the server that signed.
	Server      string `json:"server"`
	TrustDomain string `json:"trust_domain"`
	svidReport
}

// x509MintFlags are the flags of x509 mint.
type x509MintFlags struct {
	spiffeID, profile, dataDir, outDir, kekFile string
	dnsNames                                    []string
	ttl                                         time.Duration
	op                                          opOptions
}

func (a *app) newX509MintCommand() *cobra.Command {
	var fl x509MintFlags
	cmd := &cobra.Command{
		Use: "mint --spiffe-id ID --out DIR [--dns NAME ...] [--ttl 24h]\n" +
			"       (--addr unix:///path/admin.sock [--profile ecdsa|sm2] [--timeout 1m] |\n" +
			"        --data-dir D --profile ecdsa|sm2 [--kek-file F])",
		Short: "Mint an X509-SVID through a running server, or offline from a local CA",
		Long:  x509MintLong,
		Example: `  meshca x509 mint --spiffe-id spiffe://example.org/ops/tool --addr unix:///var/lib/meshca/admin.sock \
      --profile sm2 --out ./tool
  meshca x509 mint --spiffe-id spiffe://meshca.local/ns/prod/sa/api --profile ecdsa \
      --data-dir ./local-ca --out ./api --dns api.prod.svc`,
		Args: cobra.NoArgs,
		// Use lists the flags already.
		DisableFlagsInUseLine: true,
	}
	f := cmd.Flags()
	f.StringVar(&fl.spiffeID, "spiffe-id", "", "SPIFFE ID of the workload, spiffe://<trust domain>/<path> (required)")
	f.StringVar(&fl.profile, "profile", "", "signature profile: ecdsa or sm2 (required with --data-dir; default ecdsa with --addr)")
	f.StringVar(&fl.op.addr, "addr", "", "mint through the server whose operator API is at unix:///path/admin.sock, or host:port over mutual TLS (default $"+envAddr+" unless --data-dir is given)")
	f.DurationVar(&fl.op.timeout, "timeout", opDefaultTimeout, "give up on the server after this long (with --addr)")
	addAdminTLSFlags(cmd, &fl.op)
	f.StringVar(&fl.dataDir, "data-dir", "", "mint offline from the local CA in this directory, created if needed")
	f.StringVar(&fl.outDir, "out", "", "directory to write svid.pem, key.pem and bundle.pem into (required)")
	f.StringSliceVar(&fl.dnsNames, "dns", nil, "DNS name to add as a SAN; repeat or separate with commas")
	f.DurationVar(&fl.ttl, "ttl", ca.DefaultSVIDTTL, "lifetime of the X509-SVID, at most the intermediate's remaining lifetime")
	f.StringVar(&fl.kekFile, "kek-file", "", "key-encryption key file of the local CA (default $MESHCA_KEK_FILE, else <data-dir>/kek, for development only; with --data-dir)")
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		online, err := a.checkMintFlags(cmd, &fl)
		if err != nil {
			return err
		}
		// Check the request before anything is created, written or sent.
		p, err := ca.ProfileByName(fl.profile)
		if err != nil {
			return err
		}
		id, err := ca.ParseWorkloadID(fl.spiffeID)
		if err != nil {
			return err
		}
		if err := ca.CheckDNSNames(fl.dnsNames); err != nil {
			return err
		}
		if err := checkTTL(fl.ttl); err != nil {
			return err
		}
		out, err := absDir("--out", fl.outDir)
		if err != nil {
			return err
		}
		if online {
			return a.mintThroughServer(cmd, fl, p, id, out)
		}
		data, err := absDir("--data-dir", fl.dataDir)
		if err != nil {
			return err
		}
		if err := checkNotServerDataDir(data); err != nil {
			return err
		}

		l, kek, err := a.openCA(data, fl.kekFile, id.TrustDomain())
		if err != nil {
			return err
		}
		defer l.Close()
		m, err := mint(cmd.Context(), l, svidRequest{profile: p, spiffeID: id.String(), dnsNames: fl.dnsNames, ttl: fl.ttl})
		if err != nil {
			return fmt.Errorf("mint %s X509-SVID for %s: %w", p.Name(), id, err)
		}
		files, err := writeSVID(out, m, l.Bundle().ForProfile(p.Name()).PEM(), false)
		if err != nil {
			return err
		}
		rep := mintReport{
			DataDir: data, TrustDomain: l.TrustDomain().Name(), CACreated: l.Created(), KEK: kek,
			Rotations:  append([]string{}, l.Rotations()...),
			svidReport: newSVIDReport(m, fl.dnsNames, files),
		}
		if a.output == outputJSON {
			return writeJSON(a.stdout, rep)
		}
		return a.printMint(rep)
	})
	return cmd
}

// checkNotServerDataDir refuses to mint offline in the data directory of
// a server or of dev: a local CA there would be a second CA, unrelated to
// the trust domain the server runs.
func checkNotServerDataDir(dir string) error {
	has, err := server.IsDataDir(dir)
	if err != nil {
		return err
	}
	if has {
		return usageErrorf("--data-dir %s is the data directory of a meshca server (or of meshca dev): an offline CA there would be a second CA, unrelated to the server's trust domain; mint through the server with --addr unix://%s, or give mint a directory of its own", dir, server.DefaultAdminSocket(dir))
	}
	return nil
}

// checkMintFlags checks the flags of x509 mint and tells its mode: online
// (through a server: --addr, or $MESHCA_ADDR without --data-dir) or
// offline (--data-dir). Missing flags are reported together, as cobra
// reports required flags. It sets the default profile of the online mode.
func (a *app) checkMintFlags(cmd *cobra.Command, fl *x509MintFlags) (online bool, err error) {
	fs := cmd.Flags()
	dataGiven := fs.Changed("data-dir")
	if dataGiven && fl.op.addr != "" {
		return false, usageErrorf("--addr and --data-dir exclude each other: --addr mints through a running server, --data-dir offline from a local CA")
	}
	online = fl.op.addr != "" || !dataGiven && a.getenv(envAddr) != ""
	var missing []string
	if !online && fl.dataDir == "" {
		missing = append(missing, "data-dir")
	}
	if fl.outDir == "" {
		missing = append(missing, "out")
	}
	if !online && fl.profile == "" {
		missing = append(missing, "profile")
	}
	if fl.spiffeID == "" {
		missing = append(missing, "spiffe-id")
	}
	if len(missing) > 0 {
		msg := `required flag(s) "` + strings.Join(missing, `", "`) + `" not set`
		if !online && fl.dataDir == "" {
			msg += fmt.Sprintf("; mint through a running server with --addr unix:///path/%s (or $%s), or offline from a local CA with --data-dir D", server.AdminSocketName, envAddr)
		}
		return false, usageErrorf("%s", msg)
	}
	if online {
		if fs.Changed("kek-file") {
			return false, usageErrorf("--kek-file is only used with --data-dir: a server seals its keys under its own key-encryption key")
		}
		if err := checkTimeout(fl.op); err != nil {
			return false, err
		}
		if fl.ttl%time.Second != 0 {
			return false, usageErrorf("--ttl %s: a server takes whole seconds", fl.ttl)
		}
		if fl.profile == "" {
			fl.profile = ca.ProfileECDSA
		}
	} else {
		for _, name := range []string{"timeout", "admin-cert", "admin-key", "trust-bundle"} {
			if fs.Changed(name) {
				return false, usageErrorf("--%s is only used with --addr", name)
			}
		}
	}
	return online, nil
}

// mintThroughServer mints an X509-SVID for id with the operator API of a
// running server: the key is generated here and only its CSR is sent. The
// request (fl, p, id, out) is checked.
func (a *app) mintThroughServer(cmd *cobra.Command, fl x509MintFlags, p ca.Profile, id spiffeid.ID, out string) error {
	ctx, c, done, err := a.operatorCall(cmd, fl.op)
	if err != nil {
		return err
	}
	defer done()
	name := p.Name()
	key, err := p.GenerateKey()
	if err != nil {
		return fmt.Errorf("generate %s workload key: %w", name, err)
	}
	csr, err := p.CreateCSR(key)
	if err != nil {
		return fmt.Errorf("create %s CSR: %w", name, err)
	}
	what := fmt.Sprintf("mint %s X509-SVID for %s", name, id)
	resp, err := c.MintX509SVID(ctx, &operatorpb.MintX509SVIDRequest{
		SpiffeId: id.String(), Csr: csr, Profile: name, DnsNames: fl.dnsNames, TtlSeconds: int64(fl.ttl / time.Second),
	})
	if err != nil {
		return c.callError(what, fl.op, err)
	}
	svid, err := checkMinted(p, id, key, resp)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	der, err := p.MarshalPrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode %s workload key: %w", name, err)
	}
	defer clear(der)
	m := &mintedSVID{svid: svid, keyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})}
	defer clear(m.keyPEM)
	files, err := writeSVID(out, m, ca.EncodePEM(resp.Roots...), false)
	if err != nil {
		return err
	}
	rep := serverMintReport{Server: c.addr, TrustDomain: id.TrustDomain().Name(), svidReport: newSVIDReport(m, fl.dnsNames, files)}
	if a.output == outputJSON {
		return writeJSON(a.stdout, rep)
	}
	t := newTable(a.stdout, "")
	t.row("profile", rep.Profile)
	printSVID(t, rep.svidReport)
	t.row("server", rep.Server+" (recorded in the ledger)")
	return t.flush()
}

// checkMinted checks a server's answer to MintX509SVID, a chain for id
// whose leaf certifies key, with the profile's roots, and returns it as an
// X509-SVID.
func checkMinted(p ca.Profile, id spiffeid.ID, key crypto.Signer, resp *operatorpb.MintX509SVIDResponse) (*ca.X509SVID, error) {
	if len(resp.Chain) == 0 {
		return nil, errors.New("the server returned no certificate")
	}
	if len(resp.Roots) == 0 {
		return nil, fmt.Errorf("the server returned no %s root", p.Name())
	}
	for i, der := range append(slices.Clone(resp.Chain), resp.Roots...) {
		if _, err := p.ParseCertificate(der); err != nil {
			return nil, fmt.Errorf("the server returned a certificate (%d) that does not parse: %w", i+1, err)
		}
	}
	leaf, _ := p.ParseCertificate(resp.Chain[0])
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if eq, ok := leaf.PublicKey.(equaler); !ok || !eq.Equal(key.Public()) {
		return nil, errors.New("the server returned a certificate for another key than the one sent")
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0] != id.String() {
		return nil, fmt.Errorf("the server returned a certificate for %v, not %s", leaf.URIs, id)
	}
	return &ca.X509SVID{
		SPIFFEID: id.String(), Profile: p.Name(), SerialNumber: leaf.SerialNumber,
		NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, Certificates: resp.Chain,
	}, nil
}

func (a *app) printMint(r mintReport) error {
	t := newTable(a.stdout, "")
	t.row("profile", r.Profile)
	printSVID(t, r.svidReport)
	state := "reopened"
	if r.CACreated {
		state = "created"
	}
	t.row("CA", fmt.Sprintf("%s (%s, trust domain %s)", r.DataDir, state, r.TrustDomain))
	for _, rot := range r.Rotations {
		t.row("rotation", rot)
	}
	return t.flush()
}
