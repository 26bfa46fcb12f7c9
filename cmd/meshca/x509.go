package main

import (
	"fmt"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/spf13/cobra"
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

const x509MintLong = `mint issues one X509-SVID offline, straight from the local CA in --data-dir,
and writes into --out:
  svid.pem    the leaf, then the intermediates (mode 0644)
  key.pem     the leaf's private key, PKCS#8, generated here (mode 0600)
  bundle.pem  the roots of the profile (mode 0644)
--out is created (mode 0700) if needed; files already there are replaced.

If --data-dir holds no CA yet, one is created for the trust domain of
--spiffe-id; an existing CA must be of that trust domain. This local CA
(<data-dir>/ca/state.json) is a CA of its own: it is not the trust domain that
"meshca dev" or "meshca server" runs from the same directory, whose roots live
in the replicated state, so give mint a directory of its own.

The key-encryption key is --kek-file F, else $MESHCA_KEK_FILE, else
<data-dir>/kek, created if needed, for development only.

Offline minting is neither authorized nor recorded: whoever can read the data
directory and its KEK can mint any identity of the trust domain.`

// mintReport is what x509 mint prints.
type mintReport struct {
	DataDir     string   `json:"data_dir"`
	TrustDomain string   `json:"trust_domain"`
	CACreated   bool     `json:"ca_created"`
	KEK         kekInfo  `json:"kek"`
	Rotations   []string `json:"rotations"`
	svidReport
}

func (a *app) newX509MintCommand() *cobra.Command {
	var (
		spiffeID, profile, dataDir, outDir, kekFile string
		dnsNames                                    []string
		ttl                                         time.Duration
	)
	cmd := &cobra.Command{
		Use:   "mint --spiffe-id ID --profile ecdsa|sm2 --data-dir D --out DIR [--dns NAME ...] [--ttl 24h] [--kek-file F]",
		Short: "Mint an X509-SVID offline from the local CA",
		Long:  x509MintLong,
		Example: `  meshca x509 mint --spiffe-id spiffe://meshca.local/ns/prod/sa/api --profile ecdsa \
      --data-dir ~/.local/share/meshca --out ./api --dns api.prod.svc`,
		Args: cobra.NoArgs,
		// Use lists the flags already.
		DisableFlagsInUseLine: true,
	}
	f := cmd.Flags()
	f.StringVar(&spiffeID, "spiffe-id", "", "SPIFFE ID of the workload, spiffe://<trust domain>/<path> (required)")
	f.StringVar(&profile, "profile", "", "signature profile: ecdsa or sm2 (required)")
	f.StringVar(&dataDir, "data-dir", "", "data directory of the local CA (required)")
	f.StringVar(&outDir, "out", "", "directory to write svid.pem, key.pem and bundle.pem into (required)")
	f.StringSliceVar(&dnsNames, "dns", nil, "DNS name to add as a SAN; repeat or separate with commas")
	f.DurationVar(&ttl, "ttl", ca.DefaultSVIDTTL, "lifetime of the X509-SVID, at most the intermediate's remaining lifetime")
	f.StringVar(&kekFile, "kek-file", "", "key-encryption key file (default $MESHCA_KEK_FILE, else <data-dir>/kek, for development only)")
	for _, name := range []string{"spiffe-id", "profile", "data-dir", "out"} {
		if err := cmd.MarkFlagRequired(name); err != nil {
			panic(err) // the flag is declared just above
		}
	}
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		// Check the request before anything is created or written.
		p, err := ca.ProfileByName(profile)
		if err != nil {
			return err
		}
		id, err := ca.ParseWorkloadID(spiffeID)
		if err != nil {
			return err
		}
		if err := ca.CheckDNSNames(dnsNames); err != nil {
			return err
		}
		if err := checkTTL(ttl); err != nil {
			return err
		}
		data, err := absDir("--data-dir", dataDir)
		if err != nil {
			return err
		}
		out, err := absDir("--out", outDir)
		if err != nil {
			return err
		}

		l, kek, err := a.openCA(data, kekFile, id.TrustDomain())
		if err != nil {
			return err
		}
		defer l.Close()
		m, err := mint(cmd.Context(), l, svidRequest{profile: p, spiffeID: id.String(), dnsNames: dnsNames, ttl: ttl})
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
			svidReport: newSVIDReport(m, dnsNames, files),
		}
		if a.output == outputJSON {
			return writeJSON(a.stdout, rep)
		}
		return a.printMint(rep)
	})
	return cmd
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
