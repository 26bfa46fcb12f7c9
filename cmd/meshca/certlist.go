package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/spf13/cobra"
)

const certListLong = `list prints issued certificates (X509-SVIDs of workloads, agents and
servers) in the order the cluster committed them: serial, SPIFFE ID, the node
agent it was issued through, profile, issuing intermediate, validity and,
when revoked, the revocation time and reason.

With a history database (PostgreSQL) configured on the server, list reads it:
every certificate the cluster issued, as long as the retention keeps them.
Otherwise, or with --hot-window, it reads the Raft ledger, which holds the
certificates that have not expired (and those expired for less than the
ledger's grace).

Filters: --spiffe-id, --node (the agent's SPIFFE ID, or "operator"),
--revoked, --since and --until (bounds of the issuance time, not-before: an
RFC 3339 time or a duration meaning that long ago, 24h). Pages: --limit
(default 100) and --page-token, as printed at the end of a page that has
more. --output json prints {"certificates": [...], "next_page_token",
"source"}.

--issuer (an authority ID of meshca authority show) and --expiring-within (a
duration: unexpired ones that expire within it) read the ledger's hot window
by expiry instead, up to --limit (at most 100000).` + opLong

func (a *app) newCertListCommand() *cobra.Command {
	var (
		o            opOptions
		req          operatorpb.QueryCertificatesRequest
		since, until string
		limit        int
		issuer       string
		within       time.Duration
	)
	cmd := &cobra.Command{
		Use:   "list [--spiffe-id ID] [--node AGENT-ID] [--revoked] [--since T] [--until T] [--limit N] [--page-token P] [--hot-window] [--issuer ID] [--expiring-within D]",
		Short: "List issued certificates, from PostgreSQL when configured",
		Long:  certListLong,
		Args:  cobra.NoArgs,
	}
	f := cmd.Flags()
	f.StringVar(&req.SpiffeId, "spiffe-id", "", "only certificates of this SPIFFE ID")
	f.StringVar(&req.NodeId, "node", "", "only certificates issued through this node agent (its SPIFFE ID)")
	f.BoolVar(&req.Revoked, "revoked", false, "only revoked certificates")
	f.StringVar(&since, "since", "", "only certificates issued at or after this time: RFC 3339, or a duration ago (24h)")
	f.StringVar(&until, "until", "", "only certificates issued before this time: RFC 3339, or a duration ago")
	f.IntVar(&limit, "limit", 100, "at most this many certificates (1 to 10000)")
	f.StringVar(&req.PageToken, "page-token", "", "continue where the previous page ended")
	f.BoolVar(&req.HotWindow, "hot-window", false, "read the Raft ledger even with a history database")
	f.StringVar(&issuer, "issuer", "", "certificates signed by this authority (from the ledger's hot window)")
	f.DurationVar(&within, "expiring-within", 0, "unexpired certificates that expire within this duration (from the ledger's hot window)")
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, _ []string) error {
		if issuer != "" || within != 0 {
			if since != "" || until != "" || req.PageToken != "" {
				return usageErrorf("--issuer and --expiring-within read the ledger by expiry: they do not combine with --since, --until or --page-token")
			}
			return a.certLedgerList(cmd, o, &operatorpb.ListCertificatesRequest{SpiffeId: req.SpiffeId, NodeId: req.NodeId,
				IssuerId: issuer, RevokedOnly: req.Revoked}, within, limit)
		}
		s, u, err := parsePageFlags(since, until, limit)
		if err != nil {
			return err
		}
		if !s.IsZero() {
			req.SinceUnix = s.Unix()
		}
		if !u.IsZero() {
			req.UntilUnix = u.Unix()
		}
		req.PageSize = int32(limit)
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		resp, err := c.QueryCertificates(ctx, &req)
		if err != nil {
			return c.callError("cert list", o, err)
		}
		certs := make([]certReport, 0, len(resp.Certificates))
		for _, hc := range resp.Certificates {
			r := certReport{Serial: serialHex(hc.Serial), SPIFFEID: hc.SpiffeId, NodeID: hc.NodeId, Profile: hc.Profile, IssuerID: hc.IssuerId,
				NotBefore: time.Unix(hc.NotBeforeUnix, 0).UTC(), NotAfter: time.Unix(hc.NotAfterUnix, 0).UTC(), RaftIndex: hc.RaftIndex}
			if hc.RevokedUnix != 0 {
				t := time.Unix(hc.RevokedUnix, 0).UTC()
				r.Revoked, r.RevokedAt = true, &t
				r.Reason, r.ReasonCode = reasonName(hc.RevocationReason), hc.RevocationReason
			}
			certs = append(certs, r)
		}
		if a.output == outputJSON {
			return writeJSON(a.stdout, struct {
				Certificates  []certReport `json:"certificates"`
				NextPageToken string       `json:"next_page_token,omitempty"`
				Source        string       `json:"source"`
			}{certs, resp.NextPageToken, resp.Source})
		}
		tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SERIAL\tSPIFFE ID\tNODE\tPROFILE\tNOT BEFORE\tNOT AFTER\tREVOKED")
		for _, r := range certs {
			rev := "-"
			if r.RevokedAt != nil {
				rev = fmt.Sprintf("%s (%s)", r.RevokedAt.Format(time.RFC3339), r.Reason)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Serial, r.SPIFFEID, dash(r.NodeID), r.Profile,
				r.NotBefore.Format(time.RFC3339), r.NotAfter.Format(time.RFC3339), rev)
		}
		if err := tw.Flush(); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
		fmt.Fprintf(a.stdout, "(%d certificates from %s)\n", len(certs), resp.Source)
		if resp.NextPageToken != "" {
			fmt.Fprintf(a.stdout, "more: --page-token %s\n", resp.NextPageToken)
		}
		return nil
	})
	return cmd
}
