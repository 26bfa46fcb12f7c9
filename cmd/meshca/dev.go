package main

import (
	"fmt"
	"path/filepath"

	"github.com/meshca/meshca/ca"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// defaultTrustDomain is the trust domain of a data directory dev creates.
const defaultTrustDomain = "meshca.local"

const devLong = `dev creates a local CA in a data directory, or reopens the one already there,
and mints one demo X509-SVID per profile (ecdsa and sm2) for
spiffe://<trust domain>/dev/uid/<your uid>. It prints where the files are and the
openssl commands that verify them.

For now dev mints and exits. It is meant to become one long-running process,
a single-node server and agent serving the Workload API and SDS to the caller;
that part is not built yet.

The data directory is the first of:
  --data-dir D
  $MESHCA_DATA_DIR
  $XDG_DATA_HOME/meshca
  ~/.local/share/meshca

Files (directories 0700, private keys 0600, everything else 0644):
  D/ca/state.json                  the CA: roots and intermediates, keys sealed under the KEK
  D/kek                            the KEK, when neither --kek-file nor $MESHCA_KEK_FILE is set
  D/dev/bundle.pem                 the roots of every profile
  D/dev/bundle.spiffe.json         SPIFFE trust bundle (JWK set) of the ECDSA roots only:
                                   JOSE has no SM2 curve, so go-spiffe cannot parse SM2 roots
  D/dev/<profile>/svid.pem         the leaf, then the intermediates
  D/dev/<profile>/leaf.pem         the leaf alone
  D/dev/<profile>/intermediates.pem
  D/dev/<profile>/key.pem          the leaf's private key (PKCS#8)
  D/dev/<profile>/bundle.pem       the roots of that profile
Each run mints new SVIDs and keys over the previous ones; the CA stays. An
intermediate past half of its 30-day lifetime is replaced when the CA is opened.

Key-encryption key (KEK): --kek-file F or $MESHCA_KEK_FILE names an existing
file of 32 random bytes in base64, readable by its owner only, e.g.
  (umask 077; head -c 32 /dev/urandom | base64 > kek)
Without either, dev creates D/kek and warns that a KEK kept beside the keys it
protects is for development only. A CA opens only with the KEK it was created
with; a wrong one is an error and changes nothing.

The trust domain (--trust-domain, default meshca.local) is fixed when the CA is
created; when reopening, a --trust-domain given must match it.`

// devReport is what dev prints.
type devReport struct {
	DataDir      string       `json:"data_dir"`
	TrustDomain  string       `json:"trust_domain"`
	CACreated    bool         `json:"ca_created"`
	KEK          kekInfo      `json:"kek"`
	Rotations    []string     `json:"rotations"`
	Bundle       string       `json:"bundle"`
	SPIFFEBundle string       `json:"spiffe_bundle"`
	SVIDs        []svidReport `json:"svids"`
}

func (a *app) newDevCommand() *cobra.Command {
	var dataDir, trustDomain, kekFile string
	cmd := &cobra.Command{
		Use:   "dev [--data-dir D] [--trust-domain TD] [--kek-file F]",
		Short: "Create or reopen a local CA and mint a demo X509-SVID per profile",
		Long:  devLong,
		Args:  cobra.NoArgs,
		// Use lists the flags already.
		DisableFlagsInUseLine: true,
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "data directory (default $MESHCA_DATA_DIR, else $XDG_DATA_HOME/meshca, else ~/.local/share/meshca)")
	cmd.Flags().StringVar(&trustDomain, "trust-domain", defaultTrustDomain, "trust domain of a new CA; if given when reopening, it must match the CA's")
	cmd.Flags().StringVar(&kekFile, "kek-file", "", "key-encryption key file (default $MESHCA_KEK_FILE, else <data-dir>/kek, for development only)")
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		var td spiffeid.TrustDomain
		tdGiven := cmd.Flags().Changed("trust-domain")
		if tdGiven {
			var err error
			if td, err = spiffeid.TrustDomainFromString(trustDomain); err != nil {
				return fmt.Errorf("--trust-domain %q: %w", trustDomain, err)
			}
		}
		return a.dev(cmd, dataDir, kekFile, td)
	})
	return cmd
}

// dev opens the CA in dataDir (creating it for td, or meshca.local when td
// is zero) and mints and writes the demo SVIDs.
func (a *app) dev(cmd *cobra.Command, dataDir, kekFile string, td spiffeid.TrustDomain) error {
	if !cmd.Flags().Changed("data-dir") {
		d, err := defaultDataDir(a.getenv)
		if err != nil {
			return err
		}
		dataDir = d
	}
	dataDir, err := absDir("--data-dir", dataDir)
	if err != nil {
		return err
	}
	if td.IsZero() {
		exists, err := ca.LocalExists(dataDir)
		if err != nil {
			return err
		}
		if !exists {
			td = spiffeid.RequireTrustDomainFromString(defaultTrustDomain)
		}
	}
	l, kek, err := a.openCA(dataDir, kekFile, td)
	if err != nil {
		return err
	}
	defer l.Close()

	td = l.TrustDomain()
	devDir := filepath.Join(dataDir, "dev")
	bundle := l.Bundle()
	spiffeJSON, err := bundle.ForProfile(ca.ProfileECDSA).SPIFFEJSON()
	if err != nil {
		return fmt.Errorf("encode SPIFFE bundle: %w", err)
	}
	rep := devReport{
		DataDir: dataDir, TrustDomain: td.Name(), CACreated: l.Created(), KEK: kek,
		Rotations:    append([]string{}, l.Rotations()...),
		Bundle:       filepath.Join(devDir, "bundle.pem"),
		SPIFFEBundle: filepath.Join(devDir, "bundle.spiffe.json"),
	}
	id := fmt.Sprintf("spiffe://%s/dev/uid/%d", td.Name(), a.uid)
	for _, p := range ca.Profiles() {
		m, err := mint(cmd.Context(), l, svidRequest{profile: p, spiffeID: id, ttl: ca.DefaultSVIDTTL})
		if err != nil {
			return fmt.Errorf("mint %s X509-SVID for %s: %w", p.Name(), id, err)
		}
		files, err := writeSVID(filepath.Join(devDir, p.Name()), m, bundle.ForProfile(p.Name()).PEM(), true)
		if err != nil {
			return err
		}
		r := newSVIDReport(m, nil, files)
		r.Verify = opensslVerifyCommands(p.Name(), files)
		rep.SVIDs = append(rep.SVIDs, r)
	}
	if err := writeFiles(devDir,
		outFile{rep.Bundle, bundle.PEM(), modePublic},
		outFile{rep.SPIFFEBundle, spiffeJSON, modePublic},
	); err != nil {
		return fmt.Errorf("write trust bundle: %w", err)
	}

	if a.output == outputJSON {
		return writeJSON(a.stdout, rep)
	}
	return a.printDev(rep)
}

func (a *app) printDev(r devReport) error {
	state := "reopened"
	if r.CACreated {
		state = "created (ecdsa and sm2 roots, valid 10 years)"
	}
	kek := fmt.Sprintf("%s (id %s)", r.KEK.File, r.KEK.ID)
	if r.KEK.Source == "data-dir" {
		kek += ", in the data directory: development only"
	}
	t := newTable(a.stdout, "")
	t.row("data dir", r.DataDir)
	t.row("trust domain", r.TrustDomain)
	t.row("CA", state)
	t.row("KEK", kek)
	if len(r.Rotations) == 0 {
		t.row("rotations", "none")
	}
	for _, rot := range r.Rotations {
		t.row("rotation", rot)
	}
	t.row("bundle", r.Bundle+" (roots of every profile)")
	t.row("SPIFFE bundle", r.SPIFFEBundle+" (ECDSA roots)")
	if err := t.flush(); err != nil {
		return err
	}
	for _, s := range r.SVIDs {
		fmt.Fprintf(a.stdout, "\n%s X509-SVID\n", s.Profile)
		t := newTable(a.stdout, "  ")
		printSVID(t, s)
		if err := t.flush(); err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "  verify with openssl:\n")
		for _, c := range s.Verify {
			fmt.Fprintf(a.stdout, "    %s\n", c)
		}
	}
	fmt.Fprintf(a.stdout, "\ndev minted these and exited; the long-running dev server and agent are not built yet.\n")
	return nil
}
