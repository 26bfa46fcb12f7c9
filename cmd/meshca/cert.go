package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"math/big"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/spf13/cobra"
)

func (a *app) newCertCommand() *cobra.Command {
	return groupCommand("cert", "Issued certificates: list (from PostgreSQL or the ledger), show and revoke them",
		a.newCertListCommand(),
		a.newCertShowCommand(),
		a.newCertRevokeCommand(),
	)
}

// certLong is what every cert command's help says about the ledger.
const certLong = `

Every X.509 certificate a server hands out (agent SVIDs, workload SVIDs,
operator mints) is recorded in the replicated ledger before it leaves the
server, and kept until an hour after it expires. SERIAL is its serial
number in hex, as openssl x509 -serial or meshca cert list prints it.` + opLong

// certReport is a certificate as the cert commands print it.
type certReport struct {
	Serial     string     `json:"serial"`
	SPIFFEID   string     `json:"spiffe_id"`
	NodeID     string     `json:"node_id"`
	Profile    string     `json:"profile"`
	IssuerID   string     `json:"issuer_id"`
	NotBefore  time.Time  `json:"not_before"`
	NotAfter   time.Time  `json:"not_after"`
	Revoked    bool       `json:"revoked"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
	Reason     string     `json:"reason,omitempty"`
	ReasonCode int32      `json:"reason_code,omitempty"`
	// RaftIndex is the log entry that committed the ledger record (0 when
	// the answer does not say).
	RaftIndex uint64 `json:"raft_index,omitempty"`
}

func newCertReport(c *operatorpb.Certificate) certReport {
	r := certReport{Serial: c.Serial, SPIFFEID: c.SpiffeId, NodeID: c.NodeId, Profile: c.Profile, IssuerID: c.IssuerId,
		NotBefore: time.Unix(c.NotBeforeUnix, 0).UTC(), NotAfter: time.Unix(c.NotAfterUnix, 0).UTC(), Revoked: c.Revoked}
	if c.Revoked {
		r.RevokedAt = unixTime(c.RevokedUnix)
		r.Reason, r.ReasonCode = reasonName(c.Reason), c.Reason
	}
	return r
}

// reasons are the RFC 5280 CRLReason names, by code; 7 is unused and 8
// (removeFromCRL) is for delta CRLs.
var reasons = map[int32]string{0: "unspecified", 1: "keyCompromise", 2: "cACompromise", 3: "affiliationChanged", 4: "superseded",
	5: "cessationOfOperation", 6: "certificateHold", 9: "privilegeWithdrawn", 10: "aACompromise"}

func reasonName(code int32) string {
	if n, ok := reasons[code]; ok {
		return n
	}
	return strconv.Itoa(int(code))
}

func reasonNames() string {
	var codes []int
	for c := range reasons {
		codes = append(codes, int(c))
	}
	sort.Ints(codes)
	var names []string
	for _, c := range codes {
		names = append(names, reasons[int32(c)])
	}
	return strings.Join(names, ", ")
}

// parseReason accepts a CRLReason name (any case) or its code.
func parseReason(s string) (int32, error) {
	for code, n := range reasons {
		if strings.EqualFold(n, s) || s == strconv.Itoa(int(code)) {
			return code, nil
		}
	}
	return 0, usageErrorf("--reason %q: want one of %s (or its RFC 5280 code)", s, reasonNames())
}

func (a *app) printCerts(certs []certReport, truncated bool) error {
	if a.output == outputJSON {
		return writeJSON(a.stdout, struct {
			Certificates []certReport `json:"certificates"`
			Truncated    bool         `json:"truncated"`
		}{certs, truncated})
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERIAL\tSPIFFE ID\tNODE\tNOT AFTER\tREVOKED\tISSUER")
	for _, c := range certs {
		rev := "-"
		if c.Revoked {
			rev = c.Reason
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c.Serial, c.SPIFFEID, c.NodeID, c.NotAfter.Format(time.RFC3339), rev, c.IssuerID)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	if truncated {
		fmt.Fprintln(a.stderr, "meshca: more certificates matched: raise --limit or narrow the filters")
	}
	return nil
}

// certLedgerList is cert list by issuer or expiry, from the ledger.
func (a *app) certLedgerList(cmd *cobra.Command, o opOptions, req *operatorpb.ListCertificatesRequest, within time.Duration, limit int) error {
	if within < 0 || (within > 0 && within < time.Second) {
		return usageErrorf("--expiring-within %s: want at least 1s", within)
	}
	if limit < 1 || limit > 100_000 {
		return usageErrorf("--limit %d: want 1 to 100000", limit)
	}
	req.ExpiringWithinSeconds, req.Limit = int64(within/time.Second), int32(limit)
	ctx, c, done, err := a.operatorCall(cmd, o)
	if err != nil {
		return err
	}
	defer done()
	resp, err := c.ListCertificates(ctx, req)
	if err != nil {
		return c.callError("list certificates", o, err)
	}
	out := make([]certReport, 0, len(resp.Certificates))
	for _, x := range resp.Certificates {
		out = append(out, newCertReport(x))
	}
	return a.printCerts(out, resp.Truncated)
}

func (a *app) newCertShowCommand() *cobra.Command {
	var o opOptions
	cmd := &cobra.Command{
		Use:   "show SERIAL",
		Short: "Show one issued certificate from the ledger",
		Long:  `show prints the ledger record of one certificate, and its revocation if it is revoked.` + certLong,
		Args:  cobra.ExactArgs(1),
	}
	addOpFlags(cmd, &o)
	cmd.RunE = a.runE(func(cmd *cobra.Command, args []string) error {
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		resp, err := c.GetCertificate(ctx, &operatorpb.GetCertificateRequest{Serial: args[0]})
		if err != nil {
			return c.callError("show certificate "+args[0], o, err)
		}
		r := newCertReport(resp)
		if a.output == outputJSON {
			return writeJSON(a.stdout, r)
		}
		t := newTable(a.stdout, "")
		t.row("serial", r.Serial)
		t.row("SPIFFE ID", r.SPIFFEID)
		t.row("node", r.NodeID)
		t.row("profile", r.Profile)
		t.row("issuer", r.IssuerID)
		t.row("not before", r.NotBefore.Format(time.RFC3339))
		t.row("not after", r.NotAfter.Format(time.RFC3339))
		if r.Revoked {
			t.row("revoked", r.RevokedAt.Format(time.RFC3339)+" ("+r.Reason+")")
		} else {
			t.row("revoked", "no")
		}
		return t.flush()
	})
	return cmd
}

// revokeReport is what cert revoke prints.
type revokeReport struct {
	DryRun bool `json:"dry_run"`
	// Count is how many matched (AlreadyRevoked of them were revoked
	// before); Certificates lists at most 1000 (Truncated then).
	Count          int64        `json:"count"`
	AlreadyRevoked int64        `json:"already_revoked"`
	Truncated      bool         `json:"truncated"`
	Certificates   []certReport `json:"certificates"`
	// CRLs are, with --wait, the issuers' CRLs that list the revocations.
	CRLs []crlReport `json:"crls,omitempty"`
}

func (a *app) newCertRevokeCommand() *cobra.Command {
	var o opOptions
	var d destructiveOptions
	var spiffeID, node, reason string
	var wait bool
	cmd := &cobra.Command{
		Use:   "revoke SERIAL | --spiffe-id ID | --node NODE-ID",
		Short: "Revoke certificates: their issuers' CRLs list them at once",
		Long: `revoke records the revocation of unexpired certificates from the ledger,
through Raft: one certificate by SERIAL, every unexpired certificate of a
SPIFFE ID (--spiffe-id), or every unexpired certificate issued through an
agent (--node: its own SVIDs and its workloads'). The servers sign the
issuers' CRLs again at once and push them to every agent, which puts them in
the SDS validation contexts of its proxies; every server also serves them
over HTTP (--crl-addr) and meshca crl fetch saves them. A revoked agent SVID
can no longer renew or sign: the agent must attest again.

Revoking does not stop a workload from getting a new certificate while its
registration entry exists: delete or change the entry (or ban the node,
meshca node ban) to cut an identity off.

It prints what it will revoke and asks first, unless --yes; --dry-run only
prints. --reason is an RFC 5280 CRLReason: ` + reasonNames() + `.
--wait follows until every issuer's CRL lists the revocations (of a
revocation of more than 1000 certificates, the 1000 it prints).` + certLong,
		Args: cobra.MaximumNArgs(1),
	}
	addOpFlags(cmd, &o)
	addDestructiveFlags(cmd, &d)
	cmd.Flags().StringVar(&spiffeID, "spiffe-id", "", "revoke every unexpired certificate of this SPIFFE ID")
	cmd.Flags().StringVar(&node, "node", "", "revoke every unexpired certificate issued through this agent")
	cmd.Flags().StringVar(&reason, "reason", "unspecified", "CRLReason")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the issuers' CRLs list the revocations (bounded by --timeout)")
	cmd.RunE = a.runE(func(cmd *cobra.Command, args []string) error {
		req := &operatorpb.RevokeCertificatesRequest{SpiffeId: spiffeID, NodeId: node}
		if len(args) == 1 {
			req.Serial = args[0]
		}
		if n := len(args) + map[bool]int{true: 1}[spiffeID != ""] + map[bool]int{true: 1}[node != ""]; n != 1 {
			return usageErrorf("give exactly one of SERIAL, --spiffe-id and --node")
		}
		code, err := parseReason(reason)
		if err != nil {
			return err
		}
		req.Reason = code
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		what := req.Serial + req.SpiffeId + req.NodeId
		// What it would do, first.
		req.DryRun = true
		plan, err := c.RevokeCertificates(ctx, req)
		if err != nil {
			return c.callError("revoke "+what, o, err)
		}
		fresh := plan.Count - plan.AlreadyRevoked
		if d.dryRun {
			return a.printRevoke(plan, nil)
		}
		if fresh > 0 {
			if err := a.confirm(cmd, d, fmt.Sprintf("This revokes %d certificate(s) of %s (reason %s)", fresh, what, reasonName(code))); err != nil {
				return err
			}
		}
		req.DryRun = false
		resp, err := c.RevokeCertificates(ctx, req)
		if err != nil {
			return c.callError("revoke "+what, o, err)
		}
		var crls []crlReport
		if wait {
			if crls, err = a.waitCRLs(ctx, c, o, resp.Certificates); err != nil {
				return err
			}
		}
		return a.printRevoke(resp, crls)
	})
	return cmd
}

func (a *app) printRevoke(resp *operatorpb.RevokeCertificatesResponse, crls []crlReport) error {
	r := revokeReport{DryRun: resp.DryRun, CRLs: crls, Certificates: []certReport{}, Count: resp.Count, AlreadyRevoked: resp.AlreadyRevoked,
		Truncated: resp.Truncated}
	for _, x := range resp.Certificates {
		r.Certificates = append(r.Certificates, newCertReport(x))
	}
	if a.output == outputJSON {
		return writeJSON(a.stdout, r)
	}
	verb := "revoked"
	if r.DryRun {
		verb = "would revoke"
	}
	fmt.Fprintf(a.stdout, "%s %d certificate(s) (%d of them revoked before):\n", verb, r.Count, r.AlreadyRevoked)
	if err := a.printCerts(r.Certificates, r.Truncated); err != nil {
		return err
	}
	for _, c := range crls {
		fmt.Fprintf(a.stdout, "CRL %d of %s lists them (%d entries, next update %s)\n", c.Number, c.IssuerID, c.Revoked, c.NextUpdate.Format(time.RFC3339))
	}
	return nil
}

// waitCRLs polls the issuers' CRLs until each lists the revoked serials,
// printing progress on stderr.
func (a *app) waitCRLs(ctx context.Context, c *opClient, o opOptions, certs []*operatorpb.Certificate) ([]crlReport, error) {
	want := map[string]map[string]bool{}
	for _, x := range certs {
		if want[x.IssuerId] == nil {
			want[x.IssuerId] = map[string]bool{}
		}
		n, ok := new(big.Int).SetString(x.Serial, 16)
		if !ok {
			return nil, fmt.Errorf("serial %q from the server", x.Serial)
		}
		want[x.IssuerId][n.String()] = true
	}
	done := map[string]crlReport{}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for len(done) < len(want) {
		for issuer, serials := range want {
			if _, ok := done[issuer]; ok {
				continue
			}
			crl, err := c.GetCRL(ctx, &operatorpb.GetCRLRequest{IssuerId: issuer})
			if err != nil {
				return nil, c.callError("read the CRL of "+issuer, o, err)
			}
			rl, err := x509.ParseRevocationList(crl.Der)
			if err != nil {
				return nil, fmt.Errorf("the CRL of %s: %w", issuer, err)
			}
			listed := 0
			for _, e := range rl.RevokedCertificateEntries {
				if serials[e.SerialNumber.String()] {
					listed++
				}
			}
			if listed == len(serials) {
				done[issuer] = newCRLReport(crl)
			}
		}
		if a.output != outputJSON {
			fmt.Fprintf(a.stderr, "CRLs published: %d of %d issuers\n", len(done), len(want))
		}
		if len(done) == len(want) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the CRLs: %d of %d issuers published: %w", len(done), len(want), ctx.Err())
		case <-tick.C:
		}
	}
	out := make([]crlReport, 0, len(done))
	for _, r := range done {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IssuerID < out[j].IssuerID })
	return out, nil
}
