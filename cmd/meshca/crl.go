package main

import (
	"encoding/pem"
	"fmt"
	"os"
	"time"

	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/spf13/cobra"
)

func (a *app) newCRLCommand() *cobra.Command {
	return groupCommand("crl", "Certificate revocation lists of the trust domain's authorities",
		a.newCRLFetchCommand(),
	)
}

// crlReport is a CRL as the crl commands print it.
type crlReport struct {
	IssuerID   string    `json:"issuer_id"`
	Number     uint64    `json:"number"`
	ThisUpdate time.Time `json:"this_update"`
	NextUpdate time.Time `json:"next_update"`
	Revoked    int32     `json:"revoked"`
	File       string    `json:"file,omitempty"`
}

func newCRLReport(c *operatorpb.CRL) crlReport {
	return crlReport{IssuerID: c.IssuerId, Number: c.Number, ThisUpdate: time.Unix(c.ThisUpdateUnix, 0).UTC(),
		NextUpdate: time.Unix(c.NextUpdateUnix, 0).UTC(), Revoked: c.Revoked}
}

func (a *app) newCRLFetchCommand() *cobra.Command {
	var o opOptions
	var issuer, out string
	var pemOut bool
	cmd := &cobra.Command{
		Use:   "fetch --issuer ID --out FILE",
		Short: "Save an authority's current CRL",
		Long: `fetch saves the current CRL of one authority (an ID of meshca authority
show: a root or a server's intermediate), DER encoded, or PEM with --pem,
as openssl crl -inform DER -in FILE -text reads it. Every CA of the trust
domain has a CRL, signed again when its revocations change and well before
its next update; CRL numbers only increase. Servers started with
--crl-addr serve the same CRLs over HTTP at /crl/<ID>.` + opLong,
		Args: cobra.NoArgs,
	}
	addOpFlags(cmd, &o)
	cmd.Flags().StringVar(&issuer, "issuer", "", "the authority's ID (required)")
	cmd.Flags().StringVar(&out, "out", "", "file to write (required)")
	cmd.Flags().BoolVar(&pemOut, "pem", false, "write PEM (X509 CRL) instead of DER")
	cmd.MarkFlagRequired("issuer")
	cmd.MarkFlagRequired("out")
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		crl, err := c.GetCRL(ctx, &operatorpb.GetCRLRequest{IssuerId: issuer})
		if err != nil {
			return c.callError("fetch the CRL of "+issuer, o, err)
		}
		data := crl.Der
		if pemOut {
			data = pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: crl.Der})
		}
		if err := os.WriteFile(out, data, 0o644); err != nil { // a CRL is public
			return fmt.Errorf("write the CRL: %w", err)
		}
		r := newCRLReport(crl)
		r.File = out
		if a.output == outputJSON {
			return writeJSON(a.stdout, r)
		}
		t := newTable(a.stdout, "")
		t.row("issuer", r.IssuerID)
		t.row("number", r.Number)
		t.row("this update", r.ThisUpdate.Format(time.RFC3339))
		t.row("next update", r.NextUpdate.Format(time.RFC3339))
		t.row("revoked", r.Revoked)
		t.row("written to", r.File)
		return t.flush()
	})
	return cmd
}
