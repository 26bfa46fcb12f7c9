package main

import (
	"fmt"

	"github.com/meshca/meshca/proto/operatorpb"
	"github.com/spf13/cobra"
)

// banReport is what node ban and unban print.
type banReport struct {
	DryRun bool       `json:"dry_run"`
	Node   nodeReport `json:"node"`
	// RevokedCount is how many certificates the ban revoked; Revoked lists
	// at most 1000 of them.
	RevokedCount int64        `json:"revoked_count"`
	Revoked      []certReport `json:"revoked"`
}

// evictReport is what node evict prints.
type evictReport struct {
	DryRun bool       `json:"dry_run"`
	Node   nodeReport `json:"node"`
	// Entries are the registration entries whose parent the node is: they
	// stay, and apply again once its agent attests with the same ID.
	Entries []entryReport `json:"entries"`
}

func (a *app) newNodeBanCommand(ban bool) *cobra.Command {
	var o opOptions
	var d destructiveOptions
	var reason string
	cmd := &cobra.Command{
		Use:   "ban SPIFFE-ID",
		Short: "Ban a node: it can no longer attest or renew, and its certificates are revoked",
		Long: `ban bans an attested node. Its agent can no longer attest, renew its SVID or
get workload SVIDs (from any server; a certificate a server signed before
it learnt of the ban is refused by the ledger and not handed out), and every
unexpired certificate issued through it (its agent SVIDs and its
workloads') is revoked in the same step: the CRLs list them within moments
at every proxy. meshca node unban lifts the ban; the agent must then
attest again with new evidence (its revoked SVID stays revoked).

It prints what it will revoke and asks first, unless --yes; --dry-run only
prints. --reason is an RFC 5280 CRLReason: ` + reasonNames() + `.` + nodeLong,
		Args: cobra.ExactArgs(1),
	}
	if !ban {
		cmd.Use, cmd.Short = "unban SPIFFE-ID", "Lift a node's ban: its agent may attest again"
		cmd.Long = `unban lifts the ban of a node. Nothing it revoked is unrevoked: the agent
attests again, with new evidence, and its workloads get new certificates.` + nodeLong
	}
	addOpFlags(cmd, &o)
	if ban {
		addDestructiveFlags(cmd, &d)
		cmd.Flags().StringVar(&reason, "reason", "unspecified", "CRLReason of the revocations")
	}
	cmd.RunE = a.runE(func(cmd *cobra.Command, args []string) error {
		req := &operatorpb.BanNodeRequest{SpiffeId: args[0], Banned: ban}
		if ban {
			code, err := parseReason(reason)
			if err != nil {
				return err
			}
			req.Reason = code
		}
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		verb := map[bool]string{true: "ban", false: "unban"}[ban]
		if ban {
			req.DryRun = true
			plan, err := c.BanNode(ctx, req)
			if err != nil {
				return c.callError(verb+" node "+args[0], o, err)
			}
			if d.dryRun {
				return a.printBan(plan)
			}
			if err := a.confirm(cmd, d, fmt.Sprintf("This bans node %s and revokes its %d unexpired certificate(s)", args[0], plan.RevokedCount)); err != nil {
				return err
			}
			req.DryRun = false
		}
		resp, err := c.BanNode(ctx, req)
		if err != nil {
			return c.callError(verb+" node "+args[0], o, err)
		}
		return a.printBan(resp)
	})
	return cmd
}

func (a *app) printBan(resp *operatorpb.BanNodeResponse) error {
	r := banReport{DryRun: resp.DryRun, Node: newNodeReport(resp.Node), Revoked: []certReport{}, RevokedCount: resp.RevokedCount}
	for _, x := range resp.Revoked {
		r.Revoked = append(r.Revoked, newCertReport(x))
	}
	if a.output == outputJSON {
		return writeJSON(a.stdout, r)
	}
	state := map[bool]string{true: "banned", false: "not banned"}[r.Node.Banned]
	if r.DryRun {
		fmt.Fprintf(a.stdout, "dry run: node %s would be %s; %d certificate(s) would be revoked\n", r.Node.SPIFFEID, state, r.RevokedCount)
	} else {
		fmt.Fprintf(a.stdout, "node %s is %s; %d certificate(s) revoked\n", r.Node.SPIFFEID, state, r.RevokedCount)
	}
	if len(r.Revoked) == 0 {
		return nil
	}
	return a.printCerts(r.Revoked, int64(len(r.Revoked)) < r.RevokedCount)
}

func (a *app) newNodeEvictCommand() *cobra.Command {
	var o opOptions
	var d destructiveOptions
	cmd := &cobra.Command{
		Use:   "evict SPIFFE-ID",
		Short: "Forget a node: its agent must attest again",
		Long: `evict removes an attested node: its agent can no longer renew or get
workload SVIDs until it attests again (with evidence that gives the same
SPIFFE ID, its registration entries apply again). The entries whose parent
it is stay, and are listed. A banned node cannot be evicted: that would
forget the ban (unban it first). Its certificates are not revoked (use
meshca cert revoke --node for that).

It prints what it will do and asks first, unless --yes; --dry-run only prints.` + nodeLong,
		Args: cobra.ExactArgs(1),
	}
	addOpFlags(cmd, &o)
	addDestructiveFlags(cmd, &d)
	cmd.RunE = a.runE(func(cmd *cobra.Command, args []string) error {
		ctx, c, done, err := a.operatorCall(cmd, o)
		if err != nil {
			return err
		}
		defer done()
		plan, err := c.EvictNode(ctx, &operatorpb.EvictNodeRequest{SpiffeId: args[0], DryRun: true})
		if err != nil {
			return c.callError("evict node "+args[0], o, err)
		}
		resp := plan
		if !d.dryRun {
			if err := a.confirm(cmd, d, fmt.Sprintf("This evicts node %s (%d registration entries name it as parent)", args[0], len(plan.Entries))); err != nil {
				return err
			}
			if resp, err = c.EvictNode(ctx, &operatorpb.EvictNodeRequest{SpiffeId: args[0]}); err != nil {
				return c.callError("evict node "+args[0], o, err)
			}
		}
		r := evictReport{DryRun: resp.DryRun, Node: newNodeReport(resp.Node), Entries: []entryReport{}}
		for _, e := range resp.Entries {
			r.Entries = append(r.Entries, newEntryReport(e))
		}
		if a.output == outputJSON {
			return writeJSON(a.stdout, r)
		}
		verb := "evicted"
		if r.DryRun {
			verb = "dry run: would evict"
		}
		fmt.Fprintf(a.stdout, "%s node %s; its registration entries (kept):\n", verb, r.Node.SPIFFEID)
		for _, e := range r.Entries {
			fmt.Fprintf(a.stdout, "  %s  %s\n", e.ID, e.SPIFFEID)
		}
		return nil
	})
	return cmd
}
